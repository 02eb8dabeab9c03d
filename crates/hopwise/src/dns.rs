//! The VPN's DNS responder: on port 53 of the node's VPN addresses it answers `NAME.hopwise`
//! with the AAAA and A records of the nodes NAME names, an alias (its claimants, nearest
//! first) or a node id in hex. Other names are refused; the system resolver is left alone.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hopwise_proto::NodeId;
use hopwise_proto::service::ports;
use hopwise_proto::vpn::{CLAIM_SUB, Ipv6Prefix, Vpn, ipv4_of_key};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tracing::{debug, info};

use crate::api::{ApiContext, claimants_of, get_entries, inspect_host};

/// The zone answered.
pub const ZONE: &str = "hopwise";
/// Seconds a resolver may keep an answer: aliases move.
const TTL: u32 = 10;
/// Queries answered at once; more wait.
const MAX_IN_FLIGHT: usize = 64;
/// How often the responder looks for VPN addresses it has not bound yet (an IPv6 address
/// is usable once duplicate address detection is done; the IPv4 one once claimed).
const BIND_RETRY: Duration = Duration::from_millis(500);

/// Serves until the task is aborted.
pub async fn serve(context: ApiContext, network_key: [u8; 32]) {
    let prefix = Ipv6Prefix::from_network_key(&network_key);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut bound: Vec<IpAddr> = Vec::new();
    loop {
        let addresses = inspect_host(&context, |host| {
            host.service_at::<Vpn>(ports::VPN)
                .map(|vpn| (vpn.ipv6(), vpn.ipv4()))
        })
        .await;
        let Ok(Some((ipv6, ipv4))) = addresses else {
            return;
        };
        for address in [Some(IpAddr::V6(ipv6)), ipv4.map(IpAddr::V4)]
            .into_iter()
            .flatten()
        {
            if bound.contains(&address) {
                continue;
            }
            if let Ok(socket) = UdpSocket::bind(SocketAddr::new(address, 53)).await {
                info!(%address, "DNS responder for .{ZONE} up");
                bound.push(address);
                tokio::spawn(answer_all(
                    Arc::new(socket),
                    context.clone(),
                    prefix,
                    in_flight.clone(),
                ));
            }
        }
        if bound.len() == 2 {
            return;
        }
        tokio::time::sleep(BIND_RETRY).await;
    }
}

async fn answer_all(
    socket: Arc<UdpSocket>,
    context: ApiContext,
    prefix: Ipv6Prefix,
    in_flight: Arc<Semaphore>,
) {
    let mut buffer = vec![0; RECEIVE_BUFFER];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buffer[..len]) else {
            debug!(%from, "malformed DNS query");
            continue;
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let (socket, context) = (socket.clone(), context.clone());
        tokio::spawn(async move {
            let limit = query.edns.as_ref().map_or(PLAIN_UDP_LIMIT, |edns| {
                usize::from(edns.max_payload()).max(PLAIN_UDP_LIMIT)
            });
            let answer = answer(&context, prefix, &query).await;
            if let Some(bytes) = fitted(answer, limit) {
                let _ = socket.send_to(&bytes, from).await;
            }
            drop(permit);
        });
    }
}

/// The largest query read.
const RECEIVE_BUFFER: usize = 4_096;
/// The largest answer to a query without EDNS (RFC 1035 §4.2.1).
const PLAIN_UDP_LIMIT: usize = 512;

/// The answer's bytes within `limit`: without its records and marked truncated (so the
/// resolver knows it is partial) when they do not fit.
fn fitted(mut answer: Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = answer.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    answer.answers.clear();
    answer.metadata.truncation = true;
    answer.to_vec().ok()
}

/// The answer to one query.
async fn answer(context: &ApiContext, prefix: Ipv6Prefix, query: &Message) -> Message {
    let id = query.metadata.id;
    let [question] = &query.queries[..] else {
        return Message::error_msg(id, query.metadata.op_code, ResponseCode::FormErr);
    };
    if query.metadata.message_type != MessageType::Query || query.metadata.op_code != OpCode::Query
    {
        return Message::error_msg(id, query.metadata.op_code, ResponseCode::NotImp);
    }
    let mut response = Message::response(id, OpCode::Query);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    if query.edns.is_some() {
        // A query with EDNS gets it back (RFC 6891 §6.1.1), with the size this responder reads.
        let mut edns = Edns::new();
        edns.set_max_payload(RECEIVE_BUFFER as u16);
        response.edns = Some(edns);
    }
    response.add_query(question.clone());
    let Some(label) = label_in_zone(question.name()) else {
        response.metadata.response_code = ResponseCode::Refused;
        return response;
    };
    response.metadata.authoritative = true;
    let nodes = nodes_named(context, &label).await;
    if nodes.is_empty() {
        response.metadata.response_code = ResponseCode::NXDomain;
        return response;
    }
    let wants = |kind: RecordType| {
        matches!(question.query_type(), RecordType::ANY) || question.query_type() == kind
    };
    for node in nodes {
        if wants(RecordType::AAAA) {
            let data = RData::AAAA(AAAA(prefix.address_of(node)));
            response.add_answer(Record::from_rdata(question.name().clone(), TTL, data));
        }
        if wants(RecordType::A)
            && let Some(address) = ipv4_of(context, node).await
        {
            let data = RData::A(A(address));
            response.add_answer(Record::from_rdata(question.name().clone(), TTL, data));
        }
    }
    response
}

/// `NAME` of `NAME.hopwise.`, lower-cased; `None` outside the zone.
fn label_in_zone(name: &Name) -> Option<String> {
    let text = name.to_ascii().to_ascii_lowercase();
    let text = text.strip_suffix('.').unwrap_or(&text);
    let label = text.strip_suffix(ZONE)?.strip_suffix('.')?;
    (!label.is_empty() && !label.contains('.')).then(|| label.to_string())
}

/// The nodes a label names: a node id, or an alias's claimants, nearest first.
async fn nodes_named(context: &ApiContext, label: &str) -> Vec<NodeId> {
    if let Some(id) = NodeId::from_hex(label) {
        return vec![id];
    }
    claimants_of(context, label)
        .await
        .map(|claimants| {
            claimants
                .iter()
                .filter_map(|c| NodeId::from_hex(&c.id))
                .collect()
        })
        .unwrap_or_default()
}

/// The IPv4 address `node` claimed, as it says itself.
async fn ipv4_of(context: &ApiContext, node: NodeId) -> Option<Ipv4Addr> {
    let entries = get_entries(context, ipv4_of_key(node), Some(CLAIM_SUB.to_vec()))
        .await
        .ok()?;
    let entry = entries.iter().find(|e| e.writer == node)?;
    std::str::from_utf8(&entry.value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_too_large_for_its_query_is_truncated() {
        let name = Name::from_ascii("many.hopwise.").unwrap();
        let mut answer = Message::response(7, OpCode::Query);
        for n in 0..40u8 {
            let record =
                Record::from_rdata(name.clone(), TTL, RData::A(A(Ipv4Addr::new(100, 64, 0, n))));
            answer.add_answer(record);
        }
        let whole = fitted(answer.clone(), 4_096).unwrap();
        assert_eq!(Message::from_vec(&whole).unwrap().answers.len(), 40);
        let cut = Message::from_vec(&fitted(answer, PLAIN_UDP_LIMIT).unwrap()).unwrap();
        assert!(cut.metadata.truncation && cut.answers.is_empty());
    }

    #[test]
    fn only_single_labels_under_the_zone_are_answered() {
        let name = |text: &str| Name::from_ascii(text).unwrap();
        assert_eq!(
            label_in_zone(&name("London.hopwise.")),
            Some("london".into())
        );
        assert_eq!(
            label_in_zone(&name("new-york.HOPWISE")),
            Some("new-york".into())
        );
        assert_eq!(label_in_zone(&name("hopwise.")), None);
        assert_eq!(label_in_zone(&name("a.b.hopwise.")), None);
        assert_eq!(label_in_zone(&name("example.com.")), None);
        assert_eq!(label_in_zone(&name("xhopwise.")), None);
    }
}

//! Key files: `hopwise keygen` writes them, `hopwise node --key` and `--network-key-file` read
//! them. A node key is a static X25519 key pair, whose public half names the node
//! ([`NodeId::from_public_key`]); a network key is 32 random bytes that every member holds.
//! Both are small TOML files written with mode 0600.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use hopwise_proto::NodeId;
use serde::{Deserialize, Serialize};

pub const KEY_LEN: usize = 32;

#[derive(Clone)]
pub struct NodeKey {
    pub private: [u8; KEY_LEN],
    pub public: [u8; KEY_LEN],
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct NodeKeyFile {
    private_key: String,
    public_key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct NetworkKeyFile {
    network_key: String,
}

impl NodeKey {
    pub fn generate() -> anyhow::Result<Self> {
        let keypair = snow::Builder::new(hopwise_proto::secure::NOISE_PARAMS.parse()?)
            .generate_keypair()
            .context("generating a key pair")?;
        Ok(Self {
            private: to_key(&keypair.private)?,
            public: to_key(&keypair.public)?,
        })
    }

    pub fn id(&self) -> NodeId {
        NodeId::from_public_key(&self.public)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file: NodeKeyFile = read_toml(path)?;
        Ok(Self {
            private: from_hex(&file.private_key).context("private-key")?,
            public: from_hex(&file.public_key).context("public-key")?,
        })
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let file = NodeKeyFile {
            private_key: to_hex(&self.private),
            public_key: to_hex(&self.public),
        };
        write_private(path, "hopwise node key: keep private-key secret", &file)
    }
}

/// 32 bytes from the operating system's generator (a fresh private key is exactly that).
pub fn random_bytes() -> anyhow::Result<[u8; KEY_LEN]> {
    Ok(NodeKey::generate()?.private)
}

pub fn load_network_key(path: &Path) -> anyhow::Result<[u8; KEY_LEN]> {
    let file: NetworkKeyFile = read_toml(path)?;
    from_hex(&file.network_key).context("network-key")
}

pub fn save_network_key(key: &[u8; KEY_LEN], path: &Path) -> anyhow::Result<()> {
    let file = NetworkKeyFile {
        network_key: to_hex(key),
    };
    write_private(path, "hopwise network key: only members may hold it", &file)
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Creates `path` readable by its owner only, refusing to overwrite a key.
fn write_private(path: &Path, comment: &str, contents: &impl Serialize) -> anyhow::Result<()> {
    let text = format!("# {comment}\n{}", toml::to_string(contents)?);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn to_key(bytes: &[u8]) -> anyhow::Result<[u8; KEY_LEN]> {
    bytes.try_into().context("a key is 32 bytes")
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> anyhow::Result<[u8; KEY_LEN]> {
    let text = text.trim();
    if text.len() != 2 * KEY_LEN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("expected {} hex digits", 2 * KEY_LEN);
    }
    let mut key = [0; KEY_LEN];
    for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair)?, 16)?;
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_key_loads_back_private_to_its_owner() {
        let dir = std::env::temp_dir().join(format!("hopwise-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.key");
        let _ = std::fs::remove_file(&path);
        let key = NodeKey::generate().unwrap();
        key.save(&path).unwrap();
        let loaded = NodeKey::load(&path).unwrap();
        assert_eq!(loaded.public, key.public);
        assert_eq!(loaded.private, key.private);
        assert_eq!(loaded.id(), key.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(
            key.save(&path).is_err(),
            "an existing key is never overwritten"
        );
        assert_ne!(NodeKey::generate().unwrap().public, key.public);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

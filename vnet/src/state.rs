//! The state file: what `apply` made on a node (its plan, the namespace it ran in and
//! fingerprints of the nftables tables), at `/run/rvmm/net/<node>.json` by default.
//! `destroy`, `show` and `rvmm run --net port=NAME` read it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plan::NodePlan;

/// The default directory of state files.
pub const DEFAULT_STATE_DIR: &str = "/run/rvmm/net";

/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;

/// What was loaded into one nftables table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NftRecord {
    /// Fingerprint of the commands that were loaded.
    pub input: String,
    /// Fingerprint of the table as the kernel listed it right after.
    pub live: String,
}

/// One node's state file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeState {
    /// Format version.
    pub version: u32,
    /// The node.
    pub node: String,
    /// The network namespace `apply` configured (`None`: the host's own).
    pub netns: Option<String>,
    /// The description file it came from.
    pub description: Option<String>,
    /// What the node runs.
    pub plan: NodePlan,
    /// nftables tables, by `NAMESPACE:FAMILY TABLE`.
    pub nft: BTreeMap<String, NftRecord>,
    /// Set when the last apply failed part way: the plan before it, whose objects may
    /// still be there. The next apply and destroy clean them up too.
    #[serde(default)]
    pub previous: Option<NodePlan>,
}

impl NodeState {
    /// Every plan whose objects may be on the host: the current one and, after a
    /// failed apply, the one before.
    pub fn plans(&self) -> Vec<&NodePlan> {
        std::iter::once(&self.plan).chain(self.previous.as_ref()).collect()
    }
}

/// The state file of `node` in `dir`.
pub fn path(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("{node}.json"))
}

/// Reads a node's state file, `None` if there is none.
pub fn load(dir: &Path, node: &str) -> Result<Option<NodeState>> {
    let p = path(dir, node);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::State {
                host: node.into(),
                path: p.display().to_string(),
                problem: format!("cannot be read: {e}"),
                fix: "run as root, or point --state-dir at the right directory".into(),
            })
        }
    };
    let st: NodeState = serde_json::from_str(&text).map_err(|e| Error::State {
        host: node.into(),
        path: p.display().to_string(),
        problem: format!("is not a state file of this rvmm: {e}"),
        fix: "run `rvmm net destroy FILE --node NODE` with the description (it does not need the state file), then delete the file".into(),
    })?;
    Ok(Some(st))
}

/// Writes a node's state file atomically (a temporary file renamed over it).
pub fn save(dir: &Path, st: &NodeState) -> Result<()> {
    let p = path(dir, &st.node);
    let fail = |problem: String| Error::State {
        host: st.node.clone(),
        path: p.display().to_string(),
        problem,
        fix: "run as root, or give a writable --state-dir".into(),
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create its directory: {e}")))?;
    let text = serde_json::to_string_pretty(st).map_err(|e| fail(format!("cannot be encoded: {e}")))?;
    let tmp = dir.join(format!(".{}.json.tmp", st.node));
    std::fs::write(&tmp, text).map_err(|e| fail(format!("cannot be written: {e}")))?;
    std::fs::rename(&tmp, &p).map_err(|e| fail(format!("cannot be renamed into place: {e}")))
}

/// Removes a node's state file.
pub fn remove(dir: &Path, node: &str) -> Result<()> {
    let p = path(dir, node);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::State {
            host: node.into(),
            path: p.display().to_string(),
            problem: format!("cannot be removed: {e}"),
            fix: "run as root".into(),
        }),
    }
}

/// Every state file in `dir`, sorted by node.
pub fn all(dir: &Path) -> Result<Vec<NodeState>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::State {
                host: "-".into(),
                path: dir.display().to_string(),
                problem: format!("cannot be listed: {e}"),
                fix: "run as root, or give the right --state-dir".into(),
            })
        }
    };
    let mut v = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(node) = name.strip_suffix(".json") {
            if node.starts_with('.') {
                continue;
            }
            if let Some(st) = load(dir, node)? {
                v.push(st);
            }
        }
    }
    v.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(v)
}

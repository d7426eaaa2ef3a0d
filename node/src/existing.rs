//! What `porcupine up` finds in a data dir it is pointed at: the `node-N` directories a
//! previous run left, so it can start every one of them (or refuse, naming them).

use std::path::Path;

/// The node ids of the `node-N` directories directly under `data`, ascending.
pub fn node_dirs(data: &Path) -> std::io::Result<Vec<u16>> {
    let mut ids = Vec::new();
    let entries = match std::fs::read_dir(data) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name();
        if let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix("node-"))
            .and_then(|n| n.parse::<u16>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// How many nodes `up` starts, given `--nodes` (if passed) and the node directories
/// found (`found`, ascending): every one found, which must be `node-0..node-(k-1)`;
/// `--nodes` may only match that count. `Err` is the message for the operator.
pub fn nodes_to_start(requested: Option<u16>, found: &[u16], data: &Path) -> Result<u16, String> {
    let names = || {
        found
            .iter()
            .map(|i| data.join(format!("node-{i}")).display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if found.is_empty() {
        return Ok(requested.unwrap_or(1));
    }
    let contiguous = found
        .iter()
        .enumerate()
        .all(|(i, id)| usize::from(*id) == i);
    if !contiguous {
        return Err(format!(
            "{} holds node directories that are not node-0..node-{}: {}; move the odd ones away or use another --data",
            data.display(),
            found.len() - 1,
            names()
        ));
    }
    let have = found.len() as u16;
    match requested {
        None => Ok(have),
        Some(n) if n == have => Ok(n),
        Some(n) => Err(format!(
            "{} was last used by a {have}-node cluster ({}); `up` starts them all: run it without --nodes (or with --nodes {have}), or use another --data for a {n}-node cluster",
            data.display(),
            names()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_cluster_is_started_whole_or_refused_by_name() {
        let d = Path::new("/d");
        assert_eq!(nodes_to_start(None, &[], d), Ok(1));
        assert_eq!(nodes_to_start(Some(3), &[], d), Ok(3));
        assert_eq!(nodes_to_start(None, &[0, 1, 2], d), Ok(3));
        assert_eq!(nodes_to_start(Some(3), &[0, 1, 2], d), Ok(3));
        let e = nodes_to_start(Some(1), &[0, 1, 2], d).unwrap_err();
        assert!(e.contains("/d/node-0, /d/node-1, /d/node-2"), "{e}");
        let e = nodes_to_start(None, &[0, 2], d).unwrap_err();
        assert!(e.contains("/d/node-2"), "{e}");
    }

    #[test]
    fn node_dirs_lists_only_node_directories() {
        let t = tempfile::tempdir().unwrap();
        for n in ["node-1", "node-0", "tls", "node-x"] {
            std::fs::create_dir(t.path().join(n)).unwrap();
        }
        std::fs::write(t.path().join("node-7"), b"").unwrap();
        assert_eq!(node_dirs(t.path()).unwrap(), vec![0, 1]);
        assert_eq!(
            node_dirs(&t.path().join("absent")).unwrap(),
            Vec::<u16>::new()
        );
    }
}

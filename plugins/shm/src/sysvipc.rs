//! System V shared memory as `/proc/sysvipc/shm` lists it.
//!
//! Parsing is a pure function of the file's text, located by the header's
//! column names rather than fixed positions. It only answers "which keys
//! exist and how many attachments each has"; sizes, owners and times are
//! ignored.

use std::collections::BTreeMap;

/// Where the kernel lists the System V segments of the reader's IPC
/// namespace.
pub const PROC_SYSVIPC_SHM: &str = "/proc/sysvipc/shm";

/// Attachments per key. Segments with key 0 (`IPC_PRIVATE`, and segments
/// marked for removal, whose key the kernel resets to 0) are left out: they
/// cannot be named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SysvTable {
    attached: BTreeMap<u32, u64>,
}

impl SysvTable {
    /// Attachment count of the segment with `key`, `None` when there is none.
    pub fn get(&self, key: u32) -> Option<u64> {
        self.attached.get(&key).copied()
    }
}

/// Why the table could not be read. Its text becomes the reason of unknown
/// samples.
#[derive(Debug, thiserror::Error)]
pub enum SysvError {
    #[error("cannot read {PROC_SYSVIPC_SHM}: {0}")]
    Read(#[from] std::io::Error),
    #[error("{PROC_SYSVIPC_SHM}: no {0:?} column in the header")]
    NoColumn(&'static str),
    #[error("{PROC_SYSVIPC_SHM}: short line {0:?}")]
    ShortLine(String),
    #[error("{PROC_SYSVIPC_SHM}: bad {column} in {line:?}")]
    BadNumber { column: &'static str, line: String },
}

/// Parses the file's text.
pub fn parse(text: &str) -> Result<SysvTable, SysvError> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let column = |name: &'static str| {
        header
            .iter()
            .position(|c| *c == name)
            .ok_or(SysvError::NoColumn(name))
    };
    let (key_column, nattch_column) = (column("key")?, column("nattch")?);
    let mut table = SysvTable::default();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let number = |column: &'static str, index: usize| -> Result<i64, SysvError> {
            let field = fields
                .get(index)
                .ok_or_else(|| SysvError::ShortLine(line.to_owned()))?;
            field.parse().map_err(|_| SysvError::BadNumber {
                column,
                line: line.to_owned(),
            })
        };
        // The kernel prints key_t (a signed int) in decimal, so keys with the
        // top bit set appear negative.
        let key = number("key", key_column)? as i32 as u32;
        let nattch =
            u64::try_from(number("nattch", nattch_column)?).map_err(|_| SysvError::BadNumber {
                column: "nattch",
                line: line.to_owned(),
            })?;
        if key != 0 {
            *table.attached.entry(key).or_default() += nattch;
        }
    }
    Ok(table)
}

/// Reads and parses the current table.
pub fn read() -> Result<SysvTable, SysvError> {
    parse(&std::fs::read_to_string(PROC_SYSVIPC_SHM)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n";

    fn check(rows: &str, expect: &[(u32, Option<u64>)]) {
        let table = parse(&format!("{HEADER}{rows}")).expect("parses");
        for (key, attached) in expect {
            assert_eq!(table.get(*key), *attached, "key {key:#010x} in {rows:?}");
        }
    }

    #[test]
    fn recorded_tables() {
        check("", &[(0x4a20, None)]);
        check(
            "     18976          3       600                  4096  4242  4242      2     0     0     0     0 1763790000 0 1763790000 4096 0\n",
            &[(0x4a20, Some(2)), (0x4a21, None)],
        );
        // Detached again: present with no attachments.
        check(
            "     18976          3       600                  4096  4242  4243      0     0     0     0     0 1763790000 1763790001 1763790000 0 0\n",
            &[(0x4a20, Some(0))],
        );
        // Negative decimal for a key with the top bit set; private segments skipped.
        check(
            "-559038737          7       600                  4096  1  1      1     0     0     0     0 0 0 0 0 0\n\
                      0          8       600                  4096  1  1      5     0     0     0     0 0 0 0 0 0\n",
            &[(0xdeadbeef, Some(1)), (0, None)],
        );
    }

    #[test]
    fn malformed_tables_name_the_problem() {
        let error = |text: &str| parse(text).expect_err("refused").to_string();
        assert!(error("").contains("no \"key\" column"));
        assert!(error("key shmid\n1 2\n").contains("no \"nattch\" column"));
        assert!(error(&format!("{HEADER}12 3\n")).contains("short line"));
        assert!(error(&format!("{HEADER}x 3 600 1 1 1 1\n")).contains("bad key"));
        assert!(error(&format!("{HEADER}1 3 600 1 1 1 -1\n")).contains("bad nattch"));
    }
}

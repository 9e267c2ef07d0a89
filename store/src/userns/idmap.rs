//! The id maps of a user's namespace, as rootless podman makes them: the
//! user's own id becomes 0, their subordinate ranges (`/etc/subuid`,
//! `/etc/subgid`) follow from 1.

/// One range of `/etc/subuid` or `/etc/subgid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubRange {
    /// The first id outside.
    pub start: u32,
    /// How many ids.
    pub count: u32,
}

/// The ranges `content` (an `/etc/subuid`-style file) gives the user named
/// `name` or numbered `id`, in file order.
pub fn ranges_for(content: &str, name: &str, id: u32) -> Vec<SubRange> {
    let id_text = id.to_string();
    content
        .lines()
        .filter_map(|line| {
            let mut fields = line.trim().split(':');
            let owner = fields.next()?;
            let start = fields.next()?.trim().parse().ok()?;
            let count: u32 = fields.next()?.trim().parse().ok()?;
            ((owner == name || owner == id_text) && count > 0).then_some(SubRange { start, count })
        })
        .collect()
}

/// The `newuidmap`/`newgidmap` arguments after the pid: triples of
/// (inside, outside, count): `0 ID 1`, then each range from 1 on.
pub fn map_args(own: u32, ranges: &[SubRange]) -> Vec<String> {
    let mut args = vec!["0".to_string(), own.to_string(), "1".to_string()];
    let mut inside: u64 = 1;
    for r in ranges {
        args.extend([inside.to_string(), r.start.to_string(), r.count.to_string()]);
        inside += u64::from(r.count);
    }
    args
}

/// Whether `/proc/PID/uid_map` text maps what `map_args` asks for, in
/// any order.
pub fn same_map(proc_text: &str, args: &[String]) -> bool {
    let mut found: Vec<Vec<&str>> = proc_text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let mut wanted: Vec<Vec<&str>> = args
        .chunks(3)
        .map(|c| c.iter().map(String::as_str).collect())
        .collect();
    found.sort();
    wanted.sort();
    found == wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match_by_name_or_number() {
        let file = "alice:100000:65536\n1001:300000:10\nbob:200000:65536\n# x\nalice:500000:5\n";
        assert_eq!(
            ranges_for(file, "alice", 1000),
            vec![
                SubRange {
                    start: 100000,
                    count: 65536
                },
                SubRange {
                    start: 500000,
                    count: 5
                }
            ]
        );
        assert_eq!(
            ranges_for(file, "carol", 1001),
            vec![SubRange {
                start: 300000,
                count: 10
            }]
        );
        assert!(ranges_for(file, "dave", 7).is_empty());
    }

    #[test]
    fn maps_put_the_user_at_zero_and_ranges_after() {
        let ranges = [
            SubRange {
                start: 100000,
                count: 65536,
            },
            SubRange {
                start: 500000,
                count: 5,
            },
        ];
        assert_eq!(
            map_args(1000, &ranges),
            ["0", "1000", "1", "1", "100000", "65536", "65537", "500000", "5"]
        );
        assert_eq!(map_args(1000, &[]), ["0", "1000", "1"]);
        let proc_text = "         0       1000          1\n         1     100000      65536\n";
        let one = [SubRange {
            start: 100000,
            count: 65536,
        }];
        assert!(same_map(proc_text, &map_args(1000, &one)));
        assert!(!same_map(proc_text, &map_args(1000, &[])));
        assert!(!same_map("0 1000 1\n", &map_args(1000, &one)));
    }
}

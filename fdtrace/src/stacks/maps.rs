//! A process's code mappings: built from what the kernel recorded at exec
//! and at each executable mmap, or read once from `/proc/PID/maps` when
//! attaching to a running process; kept after the process exits.

use std::{fs, io, path::PathBuf, sync::Arc};

/// One file-backed or executable mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub executable: bool,
    /// Path as the process sees it; empty or `[vdso]`-style for
    /// anonymous code.
    pub path: Arc<str>,
    /// Where we can open it: through `/proc/PID/root` for processes in
    /// other mount namespaces.
    pub host_path: Arc<PathBuf>,
}

/// The file-backed mappings of one address space, sorted by address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessMaps {
    pub mappings: Vec<Mapping>,
}

impl Mapping {
    /// Backed by a file we can read unwind and symbol data from.
    pub fn is_file(&self) -> bool {
        self.path.starts_with('/')
    }
}

impl ProcessMaps {
    /// Reads `/proc/<tgid>/maps`.
    pub fn read(tgid: u32) -> io::Result<Self> {
        let text = fs::read_to_string(format!("/proc/{tgid}/maps"))?;
        let root = crate::procfs::Root::of(tgid);
        Ok(Self::parse(&text, |path| root.host_path(path)))
    }

    /// Parses maps text; `host_path` turns a mapped path into one we can open.
    pub fn parse(text: &str, host_path: impl Fn(&str) -> PathBuf) -> Self {
        let mut mappings: Vec<Mapping> = text
            .lines()
            .filter_map(|line| parse_line(line, &host_path))
            .collect();
        mappings.sort_by_key(|m| m.start);
        Self { mappings }
    }

    /// Adds a mapping, cutting away what it overlaps, as a new mmap
    /// replaces whatever was mapped in its range.
    pub fn insert(&mut self, new: Mapping) {
        let mut kept = Vec::with_capacity(self.mappings.len() + 2);
        for m in self.mappings.drain(..) {
            if m.end <= new.start || m.start >= new.end {
                kept.push(m);
                continue;
            }
            if m.start < new.start {
                kept.push(Mapping {
                    end: new.start,
                    ..m.clone()
                });
            }
            if m.end > new.end {
                kept.push(Mapping {
                    offset: m.offset + (new.end - m.start),
                    start: new.end,
                    ..m
                });
            }
        }
        kept.push(new);
        kept.sort_by_key(|m| m.start);
        self.mappings = kept;
    }

    /// The mapping containing `addr`.
    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.start <= addr);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }
}

fn parse_line(line: &str, host_path: &impl Fn(&str) -> PathBuf) -> Option<Mapping> {
    // 7f1c2a000000-7f1c2a022000 r-xp 00028000 fe:01 1234   /usr/lib/x86_64-linux-gnu/libc.so.6
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start();
    let executable = perms.as_bytes().get(2) == Some(&b'x');
    // File mappings, plus anonymous executable ones (JIT code, [vdso]) so
    // their frames are known to be code.
    if !path.starts_with('/') && !executable {
        return None;
    }
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        executable,
        path: Arc::from(path),
        host_path: Arc::new(host_path(path)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0a0000000-55d0a0001000 r--p 00000000 fe:01 11 /usr/bin/app
55d0a0001000-55d0a0002000 r-xp 00001000 fe:01 11 /usr/bin/app
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
7f1c2a000000-7f1c2a022000 r-xp 00028000 fe:01 1234                       /usr/lib/libc.so.6
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
7f2000000000-7f2000001000 r-xp 00000000 fe:01 99 /tmp/gone.so (deleted)
";

    #[test]
    fn parses_file_mappings_only_and_finds_addresses() {
        let maps = ProcessMaps::parse(MAPS, |p| PathBuf::from(p));
        assert_eq!(maps.mappings.len(), 4);
        let with_anon = ProcessMaps::parse(
            "7f00-7f10 r-xp 00000000 00:00 0 \n7f20-7f30 r-xp 00000000 00:00 0   [vdso]\n",
            |p| PathBuf::from(p),
        );
        assert_eq!(with_anon.mappings.len(), 2);
        assert!(!with_anon.mappings[1].is_file());
        let libc = maps.find(0x7f1c2a000010).unwrap();
        assert_eq!(
            (&*libc.path, libc.offset, libc.executable),
            ("/usr/lib/libc.so.6", 0x28000, true)
        );
        assert_eq!(&*maps.find(0x7f2000000000).unwrap().path, "/tmp/gone.so");
        assert!(maps.find(0x7f0000000010).is_none());
        assert!(maps.find(0x55d0a0002000).is_none());
        assert!(!maps.find(0x55d0a0000000).unwrap().executable);
    }

    #[test]
    fn a_new_mapping_replaces_what_it_overlaps() {
        let code = |start: u64, end: u64, offset: u64, path: &str| Mapping {
            start,
            end,
            offset,
            executable: true,
            path: Arc::from(path),
            host_path: Arc::new(PathBuf::from(path)),
        };
        let mut maps = ProcessMaps::default();
        maps.insert(code(0x1000, 0x5000, 0, "/a.so"));
        // A plugin unloaded, another mapped over the middle of its range.
        maps.insert(code(0x2000, 0x3000, 0x7000, "/b.so"));
        let layout: Vec<(u64, u64, u64, &str)> = maps
            .mappings
            .iter()
            .map(|m| (m.start, m.end, m.offset, &*m.path))
            .collect();
        assert_eq!(
            layout,
            vec![
                (0x1000, 0x2000, 0, "/a.so"),
                (0x2000, 0x3000, 0x7000, "/b.so"),
                (0x3000, 0x5000, 0x2000, "/a.so"),
            ]
        );
    }
}

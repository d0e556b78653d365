//! Loading stage, kernel layout: reads struct member offsets from the
//! kernel's BTF (`/sys/kernel/btf/vmlinux`) so the raw sched tracepoints
//! can read `task_struct` and `linux_binprm` fields without hard-coding a
//! kernel version's layout.
//!
//! Format: <https://docs.kernel.org/bpf/btf.html> (header, type section,
//! string section; type ids start at 1).

use anyhow::{Context as _, Result, bail};

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

struct Type {
    name: u32,
    kind: u32,
    members: Vec<Member>,
}

/// Parsed type and string sections.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    /// Named structs with members, by name: lookups stay cheap however
    /// many fields the loader asks for.
    structs: std::collections::HashMap<String, usize>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32> {
    let bytes = data.get(at..at + 4).context("BTF data ends early")?;
    Ok(u32::from_le_bytes(bytes.try_into()?))
}

impl Btf {
    /// Parses raw BTF (little-endian, as on x86_64).
    pub fn parse(data: &[u8]) -> Result<Self> {
        let magic = u16::from_le_bytes(data.get(0..2).context("BTF too short")?.try_into()?);
        if magic != MAGIC {
            bail!("not BTF (magic {magic:#x})");
        }
        let hdr_len = usize::try_from(u32_at(data, 4)?)?;
        let type_off = usize::try_from(u32_at(data, 8)?)?;
        let type_len = usize::try_from(u32_at(data, 12)?)?;
        let str_off = usize::try_from(u32_at(data, 16)?)?;
        let str_len = usize::try_from(u32_at(data, 20)?)?;
        let types_data = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .context("BTF type section")?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .context("BTF string section")?
            .to_vec();
        // Type id 0 is void.
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < types_data.len() {
            let name = u32_at(types_data, at)?;
            let info = u32_at(types_data, at + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = usize::try_from(info & 0xffff)?;
            let kind_flag = info >> 31 == 1;
            at += 12;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + 12 * i;
                        let offset = u32_at(types_data, m + 8)?;
                        members.push(Member {
                            name: u32_at(types_data, m)?,
                            type_id: u32_at(types_data, m + 4)?,
                            bit_offset: if kind_flag {
                                offset & 0x00ff_ffff
                            } else {
                                offset
                            },
                        });
                    }
                    12 * vlen
                }
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                _ => 0,
            };
            at += extra;
            types.push(Type {
                name,
                kind,
                members,
            });
        }
        let mut btf = Self {
            types,
            strings,
            structs: std::collections::HashMap::new(),
        };
        for (index, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && !t.members.is_empty() {
                let name = btf.name(t.name);
                if !name.is_empty() && !btf.structs.contains_key(name) {
                    btf.structs.insert(name.to_owned(), index);
                }
            }
        }
        Ok(btf)
    }

    /// Reads and parses the running kernel's BTF.
    pub fn kernel() -> Result<Self> {
        let data =
            std::fs::read("/sys/kernel/btf/vmlinux").context("read /sys/kernel/btf/vmlinux")?;
        Self::parse(&data)
    }

    fn name(&self, offset: u32) -> &str {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let Some(rest) = self.strings.get(start..) else {
            return "";
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous
    /// nested structs and unions.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32> {
        let strukt = self
            .structs
            .get(name)
            .and_then(|&index| self.types.get(index))
            .with_context(|| format!("the kernel's BTF has no struct {name}"))?;
        let bits = self
            .find_member(strukt, member, 0)
            .with_context(|| format!("the kernel's BTF has no field {name}.{member}"))?;
        Ok(bits / 8)
    }

    fn find_member(&self, ty: &Type, member: &str, base: u32) -> Option<u32> {
        for m in &ty.members {
            if self.name(m.name) == member {
                return Some(base + m.bit_offset);
            }
            if m.name == 0 {
                let inner = self.types.get(usize::try_from(m.type_id).ok()?)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some(found) = self.find_member(inner, member, base + m.bit_offset)
                {
                    return Some(found);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF with `struct s { int a; union { int b; long c; }; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0s\0a\0b\0c\0int\0long\0";
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            words
                .iter()
                .for_each(|w| types.extend_from_slice(&w.to_le_bytes()))
        };
        push(&[19, KIND_INT << 24, 4, 32]); // 1: int
        push(&[23, KIND_INT << 24, 8, 64]); // 2: long
        push(&[0, (KIND_UNION << 24) | 2, 8, 5, 1, 0, 7, 2, 0]); // 3: union { b; c }
        push(&[1, (KIND_STRUCT << 24) | 2, 16, 3, 1, 0, 0, 3, 64]); // 4: struct s
        let mut data = Vec::new();
        for w in [
            u32::from(MAGIC) | (1 << 16),
            24,
            0,
            u32::try_from(types.len()).unwrap(),
        ] {
            data.extend_from_slice(&w.to_le_bytes());
        }
        for w in [
            u32::try_from(types.len()).unwrap(),
            u32::try_from(strings.len()).unwrap(),
        ] {
            data.extend_from_slice(&w.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(strings);
        data
    }

    #[test]
    fn finds_members_directly_and_inside_anonymous_unions() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("s", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("s", "c").unwrap(), 8);
        assert!(
            btf.member_offset("s", "zz")
                .unwrap_err()
                .to_string()
                .contains("no field s.zz")
        );
        assert!(btf.member_offset("t", "a").is_err());
    }

    #[test]
    fn reads_the_running_kernels_task_struct() {
        let Ok(btf) = Btf::kernel() else { return };
        let pid = btf.member_offset("task_struct", "pid").unwrap();
        let tgid = btf.member_offset("task_struct", "tgid").unwrap();
        assert_eq!(tgid, pid + 4, "pid_t pid; pid_t tgid; are adjacent");
        assert!(btf.member_offset("linux_binprm", "filename").unwrap() > 0);
    }
}

//! CPython line tables: from an instruction's byte offset in a code object
//! to its source line, in the three formats CPython has used:
//! `co_lnotab` (3.8, 3.9), the 3.10 `co_linetable`, and the location table
//! of 3.11+ (CPython's `Objects/locations.md`). Pure functions over bytes.

/// Which line-table format a code object carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineFormat {
    /// 3.8-3.9: (byte offset increment, signed line increment) pairs.
    Lnotab,
    /// 3.10: (range length in bytes, signed line delta or -128) pairs.
    Linetable310,
    /// 3.11+: varint-coded location entries, lengths in code units.
    Locations,
}

/// The line of the instruction at byte offset `offset`; `None` for an
/// instruction without one (3.10+ can say so). A negative offset (a frame
/// not started) is the first line.
pub fn line_at(format: LineFormat, table: &[u8], first_line: i32, offset: i64) -> Option<i32> {
    if offset < 0 {
        return Some(first_line);
    }
    match format {
        LineFormat::Lnotab => Some(lnotab(table, first_line, offset)),
        LineFormat::Linetable310 => linetable310(table, first_line, offset),
        LineFormat::Locations => locations(table, first_line, offset / 2),
    }
}

fn lnotab(table: &[u8], first_line: i32, offset: i64) -> i32 {
    let mut line = first_line;
    let mut addr: i64 = 0;
    for pair in table.chunks_exact(2) {
        addr += i64::from(pair[0]);
        if addr > offset {
            break;
        }
        line += i32::from(i8::from_ne_bytes([pair[1]]));
    }
    line
}

fn linetable310(table: &[u8], first_line: i32, offset: i64) -> Option<i32> {
    let mut line = first_line;
    let mut end: i64 = 0;
    for pair in table.chunks_exact(2) {
        let start = end;
        end += i64::from(pair[0]);
        let delta = i8::from_ne_bytes([pair[1]]);
        let this = if delta == -128 {
            None
        } else {
            line += i32::from(delta);
            Some(line)
        };
        if start <= offset && offset < end {
            return this;
        }
    }
    None
}

/// Reads the 3.11+ varints: 6 bits per byte, low first, bit 6 continues.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn varint(&mut self) -> Option<u32> {
        let mut b = self.byte()?;
        let mut value = u32::from(b & 63);
        let mut shift = 0;
        while b & 64 != 0 {
            b = self.byte()?;
            shift += 6;
            value |= u32::from(b & 63).checked_shl(shift)?;
        }
        Some(value)
    }

    fn svarint(&mut self) -> Option<i32> {
        let v = self.varint()?;
        let magnitude = i32::try_from(v >> 1).ok()?;
        Some(if v & 1 != 0 { -magnitude } else { magnitude })
    }
}

fn locations(table: &[u8], first_line: i32, index: i64) -> Option<i32> {
    let mut r = Reader {
        bytes: table,
        at: 0,
    };
    let mut line = first_line;
    let mut addr: i64 = 0;
    while let Some(head) = r.byte() {
        if head & 0x80 == 0 {
            // Entries start with the high bit set; anything else is corrupt.
            return None;
        }
        let code = (head >> 3) & 15;
        let length = i64::from(head & 7) + 1;
        let this = match code {
            15 => None,
            14 => {
                line += r.svarint()?;
                r.varint()?; // end line delta
                r.varint()?; // column + 1
                r.varint()?; // end column + 1
                Some(line)
            }
            13 => {
                line += r.svarint()?;
                Some(line)
            }
            10..=12 => {
                line += i32::from(code) - 10;
                r.byte()?; // column
                r.byte()?; // end column
                Some(line)
            }
            _ => {
                // Short forms: same line, one column byte.
                r.byte()?;
                Some(line)
            }
        };
        if addr <= index && index < addr + length {
            return this;
        }
        addr += length;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lnotab_pairs_with_negative_increments() {
        // Offsets 0..6 on line 10, 6..14 on 12, 14.. back on 11.
        let table = [6, 2, 8, 0xff];
        assert_eq!(line_at(LineFormat::Lnotab, &table, 10, 0), Some(10));
        assert_eq!(line_at(LineFormat::Lnotab, &table, 10, 5), Some(10));
        assert_eq!(line_at(LineFormat::Lnotab, &table, 10, 6), Some(12));
        assert_eq!(line_at(LineFormat::Lnotab, &table, 10, 20), Some(11));
        assert_eq!(line_at(LineFormat::Lnotab, &table, 10, -1), Some(10));
    }

    #[test]
    fn linetable_310_ranges_and_lineless_ones() {
        // [0,4) line 5+1=6, [4,8) no line, [8,12) line 6+2=8.
        let table = [4, 1, 4, 0x80, 4, 2];
        let at = |off| line_at(LineFormat::Linetable310, &table, 5, off);
        assert_eq!(at(0), Some(6));
        assert_eq!(at(3), Some(6));
        assert_eq!(at(4), None);
        assert_eq!(at(8), Some(8));
        assert_eq!(at(12), None);
    }

    #[test]
    fn locations_table_from_cpython_311() {
        // `def f():\n    x = 1\n    return open(p)` as compiled by 3.11:
        // RESUME (no columns, line 0 delta), then two statements.
        let table = [
            0x80 | (13 << 3),
            0, // 1 unit, "no columns", line +0
            0x80 | (11 << 3) | 1,
            8,
            9, // 2 units, one-line form: line +1
            0x80 | (14 << 3) | 3,
            2,
            0,
            12,
            19,               // 4 units, long form: line +1
            0x80 | (15 << 3), // 1 unit without a location
        ];
        let at = |unit: i64| line_at(LineFormat::Locations, &table, 1, unit * 2);
        assert_eq!(at(0), Some(1));
        assert_eq!(at(1), Some(2));
        assert_eq!(at(2), Some(2));
        assert_eq!(at(3), Some(3));
        assert_eq!(at(6), Some(3));
        assert_eq!(at(7), None);
        assert_eq!(at(8), None);
        // A varint spanning two bytes: 70 = 0b1000110 -> [6|64, 1].
        let long = [0x80 | (13 << 3), 64 | 12, 2];
        assert_eq!(line_at(LineFormat::Locations, &long, 0, 0), Some(70));
    }
}

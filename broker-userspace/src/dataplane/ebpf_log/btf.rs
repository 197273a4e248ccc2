//! The one BTF fix the debug object needs before this kernel takes its BTF.
//!
//! aya-log-ebpf 0.2.0's `AYA_LOG_LEVEL` is an `aya_ebpf::Global<u8>`, which holds a
//! `MaybeUninit<u8>`: a union, and bpf-linker 0.10 makes only struct names C identifiers,
//! so the object's BTF has `UNION MaybeUninit<u8>`. The kernel refuses the whole BTF for
//! that name (`Invalid name`), aya 0.14 then loads the object without BTF, and the
//! verifier refuses the data plane, whose SHA-1 is a `bpf_loop` callback: `missing btf
//! func_info` (docs/TOOLCHAIN.md has both messages).
//!
//! [`fix_names`] rewrites, in place, every character of a struct, union, enum, forward
//! declaration or typedef name that a C identifier cannot have into `_`: same length, so
//! no offset in the string table moves. The default object needs none and is left
//! alone; nothing refers to these names (no CO-RE relocation in this object).
use std::ops::Range;

/// A type name that was rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renamed {
    pub kind: &'static str,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not a 64-bit little-endian ELF object")]
    NotElf,
    #[error("the ELF object is cut short ({what})")]
    Truncated { what: &'static str },
    #[error("the object has no .BTF section")]
    NoBtf,
    #[error("the .BTF section is malformed: {0}")]
    Malformed(&'static str),
    #[error("BTF type name {name:?} is shared with a {kind}, which may keep it")]
    SharedName { name: String, kind: &'static str },
}

const BTF_MAGIC: u16 = 0xeb9f;

/// Rewrites the type names the kernel refuses; returns what it renamed (nothing for an
/// object whose BTF the kernel takes as it is).
pub fn fix_names(elf: &mut [u8]) -> Result<Vec<Renamed>, BtfError> {
    let section = btf_section(elf)?;
    let btf = &mut elf[section];
    let layout = Layout::read(btf)?;
    let (fix, keep) = names(btf, &layout)?;
    let strings = layout.strings.clone();
    let mut renamed = Vec::new();
    for (offset, kind) in fix {
        let name = string_at(btf, &strings, offset)?;
        if name.iter().all(|&b| ident_char(b)) && !name.first().is_some_and(u8::is_ascii_digit) {
            continue;
        }
        if let Some((_, other)) = keep.iter().find(|(o, _)| *o == offset) {
            return Err(BtfError::SharedName {
                name: String::from_utf8_lossy(name).into_owned(),
                kind: other,
            });
        }
        let from = String::from_utf8_lossy(name).into_owned();
        let start = strings.start + offset as usize;
        let len = name.len();
        for (i, b) in btf[start..start + len].iter_mut().enumerate() {
            if !ident_char(*b) || (i == 0 && b.is_ascii_digit()) {
                *b = b'_';
            }
        }
        let to = String::from_utf8_lossy(&btf[start..start + len]).into_owned();
        if !renamed.iter().any(|r: &Renamed| r.from == from) {
            renamed.push(Renamed { kind, from, to });
        }
    }
    Ok(renamed)
}

fn ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The byte range of the `.BTF` section.
fn btf_section(elf: &[u8]) -> Result<Range<usize>, BtfError> {
    if elf.len() < 64 || elf[..4] != *b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return Err(BtfError::NotElf);
    }
    let shoff = u64_at(elf, 0x28).ok_or(BtfError::NotElf)? as usize;
    let shentsize = u16_at(elf, 0x3a).ok_or(BtfError::NotElf)? as usize;
    let shnum = u16_at(elf, 0x3c).ok_or(BtfError::NotElf)? as usize;
    let shstrndx = u16_at(elf, 0x3e).ok_or(BtfError::NotElf)? as usize;
    if shentsize < 64 {
        return Err(BtfError::NotElf);
    }
    let header = |i: usize| -> Result<(u32, Range<usize>), BtfError> {
        let h = shoff + i * shentsize;
        let truncated = BtfError::Truncated {
            what: "section headers",
        };
        let name = u32_at(elf, h).ok_or(truncated.clone())?;
        let offset = u64_at(elf, h + 24).ok_or(truncated.clone())? as usize;
        let size = u64_at(elf, h + 32).ok_or(truncated)? as usize;
        let range = offset..offset.checked_add(size).ok_or(BtfError::NotElf)?;
        if range.end > elf.len() {
            return Err(BtfError::Truncated { what: "a section" });
        }
        Ok((name, range))
    };
    let (_, names) = header(shstrndx)?;
    for i in 0..shnum {
        let (name, range) = header(i)?;
        let at = names.start + name as usize;
        if elf.get(at..at + 5) == Some(b".BTF\0") && at + 5 <= names.end {
            return Ok(range);
        }
    }
    Err(BtfError::NoBtf)
}

/// Where the types and the strings of a BTF blob are.
struct Layout {
    types: Range<usize>,
    strings: Range<usize>,
}

impl Layout {
    fn read(btf: &[u8]) -> Result<Self, BtfError> {
        let field = |at| u32_at(btf, at).ok_or(BtfError::Malformed("header cut short"));
        if u16_at(btf, 0) != Some(BTF_MAGIC) {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = field(4)? as usize;
        let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
        let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
        let types = hdr_len + type_off..hdr_len + type_off + type_len;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        if types.end > btf.len() || strings.end > btf.len() {
            return Err(BtfError::Malformed("types or strings beyond the section"));
        }
        Ok(Self { types, strings })
    }
}

/// Name offsets of the types whose names must be C identifiers (with their kind), and
/// those of every other named type or member, which keep theirs (a section name has dots).
type Names = (Vec<(u32, &'static str)>, Vec<(u32, &'static str)>);

fn names(btf: &[u8], layout: &Layout) -> Result<Names, BtfError> {
    let mut fix = Vec::new();
    let mut keep = Vec::new();
    let mut at = layout.types.start;
    while at < layout.types.end {
        let word = |i: usize| {
            u32_at(btf, at + 4 * i)
                .filter(|_| at + 4 * i + 4 <= layout.types.end)
                .ok_or(BtfError::Malformed("type cut short"))
        };
        let (name, info) = (word(0)?, word(1)?);
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        // btf_type is 12 bytes; then what each kind carries (include/uapi/linux/btf.h).
        let extra = match kind {
            1 | 14 | 17 => 4,     // INT, VAR, DECL_TAG
            3 => 12,              // ARRAY
            4 | 5 => 12 * vlen,   // STRUCT, UNION: members
            6 | 13 => 8 * vlen,   // ENUM, FUNC_PROTO
            15 | 19 => 12 * vlen, // DATASEC, ENUM64
            2 | 7..=12 | 16 | 18 => 0,
            _ => return Err(BtfError::Malformed("unknown type kind")),
        };
        let named = match kind {
            4 => Some("STRUCT"),
            5 => Some("UNION"),
            6 => Some("ENUM"),
            7 => Some("FWD"),
            8 => Some("TYPEDEF"),
            19 => Some("ENUM64"),
            _ => None,
        };
        if name != 0 {
            match named {
                Some(k) => fix.push((name, k)),
                None => keep.push((name, kind_name(kind))),
            }
        }
        // Member names (struct and union members) are kept: bpf-linker writes Rust field
        // names, which are identifiers.
        if matches!(kind, 4 | 5) {
            for m in 0..vlen {
                let off =
                    u32_at(btf, at + 12 + 12 * m).ok_or(BtfError::Malformed("member cut short"))?;
                if off != 0 {
                    keep.push((off, "member"));
                }
            }
        }
        at += 12 + extra;
    }
    if at != layout.types.end {
        return Err(BtfError::Malformed("types overrun their section"));
    }
    Ok((fix, keep))
}

fn kind_name(kind: u32) -> &'static str {
    match kind {
        1 => "INT",
        2 => "PTR",
        3 => "ARRAY",
        9 => "VOLATILE",
        10 => "CONST",
        11 => "RESTRICT",
        12 => "FUNC",
        13 => "FUNC_PROTO",
        14 => "VAR",
        15 => "DATASEC",
        16 => "FLOAT",
        17 => "DECL_TAG",
        18 => "TYPE_TAG",
        _ => "type",
    }
}

fn string_at<'a>(btf: &'a [u8], strings: &Range<usize>, offset: u32) -> Result<&'a [u8], BtfError> {
    let start = strings.start + offset as usize;
    let rest = btf
        .get(start..strings.end)
        .ok_or(BtfError::Malformed("name offset beyond the strings"))?;
    let len = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(BtfError::Malformed("unterminated name"))?;
    Ok(&rest[..len])
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: `types` (already encoded) and the string table.
    fn btf(types: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for v in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(types);
        b.extend_from_slice(strings);
        b
    }

    fn ty(name: u32, kind: u32, vlen: u32, size: u32) -> Vec<u8> {
        [name, kind << 24 | vlen, size]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    /// A minimal ELF64 LE object holding one `.BTF` section (and its name table).
    fn elf(btf: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.BTF\0.shstrtab\0";
        let mut e = vec![0u8; 64];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let btf_at = e.len();
        e.extend_from_slice(btf);
        let names_at = e.len();
        e.extend_from_slice(shstrtab);
        while !e.len().is_multiple_of(8) {
            e.push(0);
        }
        let shoff = e.len();
        e.extend_from_slice(&[0u8; 64]); // the null section
        for (name, at, size) in [(1u32, btf_at, btf.len()), (6, names_at, shstrtab.len())] {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(at as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            e.extend_from_slice(&h);
        }
        e[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        e[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        e[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        e[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        e
    }

    #[test]
    fn a_rust_union_name_becomes_an_identifier_of_the_same_length() {
        // [1] UNION 'MaybeUninit<u8>' with one member 'value' of type 2,
        // [2] INT 'u8', [3] DATASEC '.rodata' (kept: section names have dots).
        let strings = b"\0MaybeUninit<u8>\0value\0u8\0.rodata\0";
        let mut types = ty(1, 5, 1, 1);
        types.extend([17u32, 2, 0].iter().flat_map(|v| v.to_le_bytes()));
        types.extend(ty(23, 1, 0, 1));
        types.extend(8u32.to_le_bytes());
        types.extend(ty(26, 15, 0, 1));
        let mut obj = elf(&btf(&types, strings));
        let before = obj.len();
        let renamed = fix_names(&mut obj).unwrap();
        assert_eq!(
            renamed,
            vec![Renamed {
                kind: "UNION",
                from: "MaybeUninit<u8>".into(),
                to: "MaybeUninit_u8_".into()
            }]
        );
        assert_eq!(obj.len(), before);
        let text = String::from_utf8_lossy(&obj);
        assert!(
            text.contains("MaybeUninit_u8_\0value\0u8\0.rodata\0"),
            "{text:?}"
        );
        // Idempotent: a fixed object needs nothing more.
        assert_eq!(fix_names(&mut obj).unwrap(), vec![]);
    }

    #[test]
    fn valid_names_are_left_alone() {
        let strings = b"\0Settings\0";
        let mut obj = elf(&btf(&ty(1, 4, 0, 8), strings));
        let copy = obj.clone();
        assert_eq!(fix_names(&mut obj).unwrap(), vec![]);
        assert_eq!(obj, copy);
    }

    #[test]
    fn a_name_a_section_shares_is_refused_not_rewritten() {
        // A union and a DATASEC with the one name '.bss': the DATASEC must keep its dot.
        let strings = b"\0.bss\0";
        let mut types = ty(1, 5, 0, 1);
        types.extend(ty(1, 15, 0, 1));
        let mut obj = elf(&btf(&types, strings));
        assert_eq!(
            fix_names(&mut obj),
            Err(BtfError::SharedName {
                name: ".bss".into(),
                kind: "DATASEC"
            })
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert_eq!(fix_names(&mut [0u8; 10]), Err(BtfError::NotElf));
        let mut obj = elf(&btf(&ty(1, 5, 3, 1), b"\0x\0"));
        assert!(matches!(fix_names(&mut obj), Err(BtfError::Malformed(_))));
        for cut in [70, 90, 120] {
            let mut short = elf(&btf(&ty(1, 5, 0, 1), b"\0a<b>\0"));
            short.truncate(cut);
            assert!(fix_names(&mut short).is_err(), "cut at {cut}");
        }
    }
}

//! Python stage, before a command starts: which files a command will run
//! CPython from (the program itself, the interpreter its `#!` line names,
//! and the libpython a shared build links), and their identity as the
//! kernel sees it, so the kernel can walk the command's Python frames from
//! its first syscall (`PY_BINARIES`).

use std::{
    env,
    ffi::OsStr,
    fs,
    io::Read as _,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use fdtrace_common::PyFile;
use object::read::elf::ElfFile64;

/// `#!` lines the kernel follows, nested (binfmt_script allows 4 levels).
const MAX_SCRIPT_DEPTH: usize = 4;
/// Bytes of a `#!` line the kernel reads (BINPRM_BUF_SIZE).
const SHEBANG_BYTES: usize = 256;
/// Where ld.so looks last (x86_64 Debian and Fedora layouts).
const DEFAULT_LIB_DIRS: [&str; 7] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

/// The ELF files running `program` will load that may hold a CPython
/// interpreter: the program (or the interpreter of its `#!` line, through
/// `PATH` for `/usr/bin/env`) if it is named like one or links libpython,
/// and that libpython. Empty for anything else.
pub fn command_files(program: &Path) -> Vec<PathBuf> {
    let Some(elf) = program_elf(program) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    let named = elf
        .file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|n| n.starts_with("python"));
    let libpython = needed_libpython(&elf);
    if named || libpython.is_some() {
        files.push(elf);
    }
    files.extend(libpython);
    files
}

/// The ELF file the kernel runs for `program`, following `#!` lines.
fn program_elf(program: &Path) -> Option<PathBuf> {
    let mut path = program.to_path_buf();
    for _ in 0..MAX_SCRIPT_DEPTH {
        let mut head = Vec::with_capacity(SHEBANG_BYTES);
        fs::File::open(&path)
            .ok()?
            .take(SHEBANG_BYTES as u64)
            .read_to_end(&mut head)
            .ok()?;
        if head.starts_with(b"\x7fELF") {
            return Some(path);
        }
        path = interpreter_of(&head)?;
    }
    None
}

/// The interpreter a `#!` line runs, resolving `/usr/bin/env NAME` through
/// `PATH`.
fn interpreter_of(head: &[u8]) -> Option<PathBuf> {
    let line = head.strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_ascii_whitespace();
    let interpreter = Path::new(words.next()?);
    if interpreter.file_name() != Some(OsStr::new("env")) {
        return Some(interpreter.to_path_buf());
    }
    // `env [-S] [-i] [NAME=VALUE...] program`: the first plain word.
    let name = words.find(|w| !w.starts_with('-') && !w.contains('='))?;
    search_path(name)
}

fn search_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The libpython `elf` links (DT_NEEDED), found as ld.so would: DT_RPATH
/// (when there is no DT_RUNPATH), LD_LIBRARY_PATH, DT_RUNPATH, then the
/// default directories (ld.so.cache is not read).
fn needed_libpython(elf: &Path) -> Option<PathBuf> {
    let data = fs::read(elf).ok()?;
    let file = ElfFile64::<object::Endianness>::parse(&*data).ok()?;
    let dynamic = dynamic_strings(&file)?;
    let needed = dynamic
        .iter()
        .find(|(tag, v)| *tag == object::elf::DT_NEEDED && v.starts_with(b"libpython"))?
        .1
        .clone();
    let origin = elf.parent().unwrap_or(Path::new("/"));
    let paths = |tag: u32| -> Vec<PathBuf> {
        dynamic
            .iter()
            .filter(|(t, _)| *t == tag)
            .flat_map(|(_, v)| v.split(|&b| b == b':'))
            .map(|dir| expand_origin(dir, origin))
            .collect()
    };
    let runpath = paths(object::elf::DT_RUNPATH);
    let mut dirs = if runpath.is_empty() {
        paths(object::elf::DT_RPATH)
    } else {
        Vec::new()
    };
    if let Some(ld) = env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(env::split_paths(&ld));
    }
    dirs.extend(runpath);
    dirs.extend(DEFAULT_LIB_DIRS.iter().map(PathBuf::from));
    let needed = OsStr::from_bytes(&needed);
    dirs.into_iter()
        .map(|d| d.join(needed))
        .find(|p| p.is_file())
}

/// `$ORIGIN` and `${ORIGIN}` in a search path entry: the object's directory.
fn expand_origin(dir: &[u8], origin: &Path) -> PathBuf {
    let text = String::from_utf8_lossy(dir);
    let origin = origin.to_string_lossy();
    PathBuf::from(
        text.replace("${ORIGIN}", &origin)
            .replace("$ORIGIN", &origin),
    )
}

/// (tag, string) of the dynamic section's search path and needed entries.
fn dynamic_strings(file: &ElfFile64<object::Endianness>) -> Option<Vec<(u32, Vec<u8>)>> {
    use object::read::elf::{Dyn as _, FileHeader as _};
    let endian = file.endian();
    let sections = file.elf_header().sections(endian, file.data()).ok()?;
    let (entries, strings_index) = sections.dynamic(endian, file.data()).ok()??;
    let strings = sections.strings(endian, file.data(), strings_index).ok()?;
    let wanted = [
        object::elf::DT_NEEDED,
        object::elf::DT_RPATH,
        object::elf::DT_RUNPATH,
    ];
    Some(
        entries
            .iter()
            .filter_map(|d| {
                let tag = d.tag32(endian)?;
                if !wanted.contains(&tag) {
                    return None;
                }
                Some((tag, d.string(endian, strings).ok()?.to_vec()))
            })
            .collect(),
    )
}

/// A file's identity as the kernel's exec and mmap records name it: its
/// real path (symlinks resolved, as the kernel's dentry walk spells it).
pub fn file_identity(path: &Path) -> Option<PyFile> {
    let real = fs::canonicalize(path).ok()?;
    Some(PyFile::of_path(real.as_os_str().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shebang_lines_name_their_interpreter() {
        assert_eq!(
            interpreter_of(b"#!/usr/bin/python3.11 -u\nprint()\n"),
            Some(PathBuf::from("/usr/bin/python3.11"))
        );
        assert_eq!(
            interpreter_of(b"#! /opt/py/bin/python3\n"),
            Some(PathBuf::from("/opt/py/bin/python3"))
        );
        // Through env, by PATH (sh is on every PATH).
        assert_eq!(
            interpreter_of(b"#!/usr/bin/env -S FOO=1 sh -e\n"),
            search_path("sh")
        );
        assert!(search_path("sh").is_some());
        assert_eq!(interpreter_of(b"\x7fELF"), None);
    }

    #[test]
    fn origin_expands_to_the_objects_directory() {
        let origin = Path::new("/opt/py/bin");
        assert_eq!(
            expand_origin(b"$ORIGIN/../lib", origin),
            PathBuf::from("/opt/py/bin/../lib")
        );
        assert_eq!(
            expand_origin(b"${ORIGIN}/lib", origin),
            PathBuf::from("/opt/py/bin/lib")
        );
    }

    #[test]
    fn a_script_resolves_to_its_interpreter_elf() {
        let dir = env::temp_dir().join(format!("fdtrace-binaries-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let script = dir.join("tool");
        fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        let sh = program_elf(Path::new("/bin/sh")).unwrap();
        assert_eq!(program_elf(&script), Some(sh));
        // Not a Python program: nothing to register.
        assert!(command_files(&script).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_is_named_by_its_real_path() {
        let dir = std::env::temp_dir().join(format!("fdtrace-identity-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let real = dir.join("python3.99");
        fs::write(&real, b"").unwrap();
        let link = dir.join("python3");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let real = fs::canonicalize(&real).unwrap();
        assert_eq!(
            file_identity(&link),
            Some(PyFile::of_path(real.as_os_str().as_bytes()))
        );
        // FNV-1a of "/a": the kernel side computes the same.
        let a = PyFile::of_path(b"/a");
        assert_eq!((a.path_hash, a.path_len), (0x07d6_6707_b49c_d92d, 2));
        fs::remove_dir_all(&dir).unwrap();
    }
}

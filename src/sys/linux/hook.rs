//! What the guardian's re-execution needs of the platform: the proof that an ELF
//! constructor is in the main executable's `.init_array`, and what a process taken over
//! before `main` does (exit at once, name itself, take its inherited fds).
//!
//! A supervisor's guardian is the host's own executable run again (`/proc/self/exe`), taken
//! over before `main` by a constructor (see `crate::guardian`). Re-executing is safe only
//! when that constructor is in the main executable's `.init_array`: linked into a shared
//! library, it would not run there, and the re-executed program would start the host's
//! `main` instead. [`constructor_in_main_executable`] proves it before any guardian is
//! spawned.

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

/// Whether the function at address `hook` is in the main executable (the file
/// `/proc/self/exe` names) and `entry`, a function pointer to it, is among that file's
/// `.init_array` pointers: then running that file again runs it before `main`. If not, why.
/// Checked once per process: the hook's address must lie in a mapping of that file, and the
/// entry's address among the pointers of the file's `SHT_INIT_ARRAY` sections as loaded.
pub(crate) fn constructor_in_main_executable(hook: usize, entry: usize) -> Result<(), String> {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    CHECKED.get_or_init(|| check_hook(hook, entry)).clone()
}

/// A mapping of the executable file: its address range and whether it is readable.
struct Mapping {
    start: usize,
    end: usize,
    readable: bool,
}

fn exe_mappings() -> Result<Vec<Mapping>, String> {
    let exe =
        rustix::fs::stat("/proc/self/exe").map_err(|e| format!("stat /proc/self/exe: {e}"))?;
    let (major, minor) = (rustix::fs::major(exe.st_dev), rustix::fs::minor(exe.st_dev));
    let maps =
        std::fs::read_to_string("/proc/self/maps").map_err(|e| format!("/proc/self/maps: {e}"))?;
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms), Some(_), Some(dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Some((dev_major, dev_minor)) = dev.split_once(':') else {
            continue;
        };
        let same_file = inode.parse::<u64>().ok() == Some(exe.st_ino)
            && u32::from_str_radix(dev_major, 16).ok() == Some(major)
            && u32::from_str_radix(dev_minor, 16).ok() == Some(minor);
        if !same_file {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        out.push(Mapping {
            start,
            end,
            readable: perms.starts_with('r'),
        });
    }
    Ok(out)
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

/// Reads `len` bytes of `file` at `offset`.
fn read_at(file: &std::fs::File, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| format!("reading the executable: {e}"))?;
    Ok(buf)
}

/// Whether function `hook` lies in the main executable and `entry` is among its
/// `.init_array` pointers.
fn check_hook(hook: usize, entry: usize) -> Result<(), String> {
    if !cfg!(all(target_pointer_width = "64", target_endian = "little")) {
        return Err("only 64-bit little-endian executables are checked".into());
    }
    let maps = exe_mappings()?;
    if !maps.iter().any(|m| m.start <= hook && hook < m.end) {
        return Err(
            "the hook is not in the main executable (the crate is linked into a shared library)"
                .into(),
        );
    }
    let file =
        std::fs::File::open("/proc/self/exe").map_err(|e| format!("open /proc/self/exe: {e}"))?;
    let header = read_at(&file, 0, 64)?;
    if header.get(..4) != Some(b"\x7fELF") || header[4] != 2 || header[5] != 1 {
        return Err("the executable is not a 64-bit little-endian ELF file".into());
    }
    let bad = || "the executable's ELF headers are malformed".to_string();
    let phoff = u64_at(&header, 0x20).ok_or_else(bad)?;
    let shoff = u64_at(&header, 0x28).ok_or_else(bad)?;
    let phentsize = usize::from(u16_at(&header, 0x36).ok_or_else(bad)?);
    let phnum = usize::from(u16_at(&header, 0x38).ok_or_else(bad)?);
    let shentsize = usize::from(u16_at(&header, 0x3a).ok_or_else(bad)?);
    let shnum = usize::from(u16_at(&header, 0x3c).ok_or_else(bad)?);
    if phentsize < 56 || shentsize < 64 || shnum == 0 {
        return Err(bad());
    }
    // The load bias: where the kernel put the program headers, less where the file says
    // the segment holding them (the one mapping offset 0) puts them.
    let phdrs = read_at(&file, phoff, phentsize * phnum)?;
    const PT_LOAD: u32 = 1;
    let first_load = (0..phnum)
        .map(|i| &phdrs[i * phentsize..(i + 1) * phentsize])
        .find(|p| u32_at(p, 0) == Some(PT_LOAD) && u64_at(p, 8) == Some(0))
        .ok_or_else(|| "the executable has no segment at offset 0".to_string())?;
    let vaddr = u64_at(first_load, 16).ok_or_else(bad)?;
    // SAFETY: getauxval reads the auxiliary vector the kernel gave this process.
    let at_phdr = unsafe { libc::getauxval(libc::AT_PHDR) } as u64;
    let bias = at_phdr.wrapping_sub(vaddr.wrapping_add(phoff));
    let shdrs = read_at(&file, shoff, shentsize * shnum)?;
    const SHT_INIT_ARRAY: u32 = 14;
    for i in 0..shnum {
        let sh = &shdrs[i * shentsize..(i + 1) * shentsize];
        if u32_at(sh, 4) != Some(SHT_INIT_ARRAY) {
            continue;
        }
        let addr = bias.wrapping_add(u64_at(sh, 16).ok_or_else(bad)?) as usize;
        let size = u64_at(sh, 32).ok_or_else(bad)? as usize;
        let mapped = maps
            .iter()
            .any(|m| m.readable && m.start <= addr && addr.saturating_add(size) <= m.end);
        if !mapped || !addr.is_multiple_of(std::mem::align_of::<usize>()) {
            return Err("the executable's .init_array is not where its headers say".into());
        }
        for k in 0..size / std::mem::size_of::<usize>() {
            // SAFETY: the array lies, aligned, within a readable mapping of the executable
            // (checked above); the loader relocated it before any constructor ran.
            let pointer = unsafe { std::ptr::read((addr as *const usize).add(k)) };
            if pointer == entry {
                return Ok(());
            }
        }
    }
    Err("the hook is not in the main executable's .init_array".into())
}

/// Ends this process at once with `code`: no atexit handler or destructor of the host's
/// program runs in a guardian.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes an integer and does not return.
    unsafe { libc::_exit(code) }
}

/// Names this process (`comm`, as `ps` and `/proc/<pid>/comm` show it; at most 15 bytes).
pub(crate) fn set_process_name(name: &std::ffi::CStr) {
    let _ = rustix::thread::set_name(name);
}

/// Ignores SIGPIPE: a guardian's stderr may be a pipe nobody reads any more.
pub(crate) fn ignore_sigpipe() {
    // SAFETY: setting a disposition to SIG_IGN involves no handler of ours.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Takes fd `n`, which the spawning process passed to this one, if it is open.
pub(crate) fn inherited_fd(n: i32) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only asks about the fd.
    if unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
        return None;
    }
    let _ = rustix::io::fcntl_setfd(
        // SAFETY: open, as checked above.
        unsafe { BorrowedFd::borrow_raw(n) },
        rustix::io::FdFlags::CLOEXEC,
    );
    // SAFETY: the fd is open, and nothing else in this process owns it: the guardian is
    // its only user and takes each passed fd once.
    Some(unsafe { OwnedFd::from_raw_fd(n) })
}

/// A pidfd of this process, for a guardian to watch.
pub(crate) fn own_pidfd() -> io::Result<OwnedFd> {
    rustix::process::pidfd_open(
        rustix::process::getpid(),
        rustix::process::PidfdFlags::empty(),
    )
    .map_err(io::Error::from)
}

/// The host's stderr, if it has one open, else `/dev/null`.
pub(crate) fn stderr_or_devnull() -> io::Result<BorrowedFd<'static>> {
    // SAFETY: F_GETFD only asks about the fd.
    if unsafe { libc::fcntl(2, libc::F_GETFD) } >= 0 {
        // SAFETY: fd 2 is open; the borrow is used only for a spawn, during which the host
        // does not close its stderr.
        return Ok(unsafe { BorrowedFd::borrow_raw(2) });
    }
    super::spawn::devnull()
}

/// Waits until one of `fds` is readable (or hung up), or `timeout` passes (`None`: no
/// timeout); returns which are.
pub(crate) fn poll_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<std::time::Duration>,
) -> io::Result<Vec<bool>> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let mut polled: Vec<PollFd<'_>> =
            fds.iter().map(|f| PollFd::new(f, PollFlags::IN)).collect();
        let left = deadline.map(|d| {
            let t = d.saturating_duration_since(std::time::Instant::now());
            Timespec {
                tv_sec: t.as_secs() as i64,
                tv_nsec: i64::from(t.subsec_nanos()),
            }
        });
        match poll(&mut polled, left.as_ref()) {
            Ok(_) => return Ok(polled.iter().map(|f| !f.revents().is_empty()).collect()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" fn not_a_constructor() {}

    #[test]
    fn a_function_outside_init_array_or_outside_the_executable_is_refused() {
        let other = not_a_constructor as *const () as usize;
        let err = check_hook(other, other).unwrap_err();
        assert!(err.contains(".init_array"), "{err}");
        // A function of the C library: not in a mapping of the executable at all.
        let libc_fn = libc::getpid as *const () as usize;
        let err = check_hook(libc_fn, libc_fn).unwrap_err();
        assert!(err.contains("shared library"), "{err}");
    }
}

//! Misuse stage: what a failed call on a descriptor means, given the table.
//!
//! The kernel reports every call given descriptors that failed with EBADF.
//! That alone says "one of these numbers was not open"; the table knows
//! why. A number this process closed, and nobody reopened since, makes a
//! double close (the call was `close`) or a use after close, told with the
//! stack of that earlier close. A number never open in the process during
//! the trace is an invalid descriptor. A number that is open (EBADF for a
//! write to a read-only descriptor) is no misuse. Pure, like `fd_table`.

use crate::{events::Fd, fd_table::StackRef};

/// What kind of misuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MisuseKind {
    DoubleClose,
    UseAfterClose,
    InvalidFd,
}

impl MisuseKind {
    /// The name reports, `--fail-on` and suppression rules use.
    pub fn name(self) -> &'static str {
        match self {
            MisuseKind::DoubleClose => "double-close",
            MisuseKind::UseAfterClose => "use-after-close",
            MisuseKind::InvalidFd => "invalid-fd",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            MisuseKind::DoubleClose,
            MisuseKind::UseAfterClose,
            MisuseKind::InvalidFd,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

/// Where a descriptor number was last closed by its process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClosedFd {
    pub tid: u32,
    pub ts_ns: u64,
    /// The close's compact stack; `None` for a close_range of several
    /// numbers (the kernel takes no stack for one), or when stacks are off.
    pub stack: Option<StackRef>,
}

/// One failed call on a descriptor that was not open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Misuse {
    pub kind: MisuseKind,
    pub tgid: u32,
    pub tid: u32,
    pub fd: Fd,
    pub syscall: &'static str,
    pub errno: i32,
    pub ts_ns: u64,
    pub stack: Option<StackRef>,
    /// The earlier close, for a double close or a use after close.
    pub closed: Option<ClosedFd>,
}

/// What EBADF on `fds` (a call's descriptor arguments) means in a process
/// where `is_open` and `closed` say what each number is: the misused
/// number, its kind, and the close before it. `None` if every number is
/// open: the call failed for its mode, not for the number.
pub fn classify(
    syscall: &str,
    fds: &[Fd],
    is_open: impl Fn(Fd) -> bool,
    closed: impl Fn(Fd) -> Option<ClosedFd>,
) -> Option<(MisuseKind, Fd, Option<ClosedFd>)> {
    if let Some((fd, at)) = fds
        .iter()
        .find_map(|&fd| closed(fd).filter(|_| !is_open(fd)).map(|at| (fd, at)))
    {
        let kind = if syscall == "close" {
            MisuseKind::DoubleClose
        } else {
            MisuseKind::UseAfterClose
        };
        return Some((kind, fd, Some(at)));
    }
    let fd = fds.iter().copied().find(|&fd| !is_open(fd))?;
    Some((MisuseKind::InvalidFd, fd, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ts_ns: u64) -> ClosedFd {
        ClosedFd {
            tid: 1,
            ts_ns,
            stack: Some(StackRef(ts_ns as u32)),
        }
    }

    /// Open: 0, 1, 2, 5. Closed earlier: 3 (at 30), 4 (at 40).
    fn classify_in(syscall: &str, fds: &[Fd]) -> Option<(MisuseKind, Fd, Option<ClosedFd>)> {
        classify(
            syscall,
            fds,
            |fd| [0, 1, 2, 5].contains(&fd),
            |fd| match fd {
                3 => Some(at(30)),
                4 => Some(at(40)),
                _ => None,
            },
        )
    }

    #[test]
    fn a_closed_number_makes_a_double_close_or_a_use_after_close_with_its_close() {
        assert_eq!(
            classify_in("close", &[3]),
            Some((MisuseKind::DoubleClose, 3, Some(at(30))))
        );
        assert_eq!(
            classify_in("read", &[4]),
            Some((MisuseKind::UseAfterClose, 4, Some(at(40))))
        );
    }

    #[test]
    fn a_number_never_open_is_invalid_and_an_open_one_is_no_misuse() {
        assert_eq!(
            classify_in("close", &[-1]),
            Some((MisuseKind::InvalidFd, -1, None))
        );
        assert_eq!(
            classify_in("write", &[1000]),
            Some((MisuseKind::InvalidFd, 1000, None))
        );
        // write(5) on a read-only descriptor: EBADF, but 5 is open.
        assert_eq!(classify_in("write", &[5]), None);
        assert_eq!(classify_in("read", &[]), None);
    }

    #[test]
    fn of_two_descriptors_the_closed_one_is_blamed_first() {
        // epoll_ctl(epfd=5, op, fd=4): 4 was closed.
        assert_eq!(
            classify_in("epoll_ctl", &[5, 4]),
            Some((MisuseKind::UseAfterClose, 4, Some(at(40))))
        );
        // sendfile(out=99, in=3): the closed one, not the never-open one.
        assert_eq!(
            classify_in("sendfile", &[99, 3]),
            Some((MisuseKind::UseAfterClose, 3, Some(at(30))))
        );
        assert_eq!(
            classify_in("splice", &[5, 99]),
            Some((MisuseKind::InvalidFd, 99, None))
        );
    }

    #[test]
    fn names_round_trip() {
        for kind in [
            MisuseKind::DoubleClose,
            MisuseKind::UseAfterClose,
            MisuseKind::InvalidFd,
        ] {
            assert_eq!(MisuseKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(MisuseKind::from_name("leak"), None);
    }
}

//! What the worker and the jail's helper say to each other over the helper's fd 3, a
//! `SOCK_SEQPACKET` socket pair: one request, then sockets or one error line, then EOF.
//!
//! The worker sends the [`Request`] as one JSON message (never in argv, which any user can
//! read in /proc). The helper answers with one message: `sockets CAPTURED DNS` carrying the
//! namespace's listeners as `SCM_RIGHTS` (the proxy first, then the captured ports, then
//! the DNS sockets), or `error TEXT` / `exec TEXT`. Each process of the helper holds the
//! socket until it execs or exits, so EOF with no error after the sockets means the
//! command is running.

use std::ffi::OsString;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

use crate::sandbox::SandboxSpec;

/// The helper's end of the socket pair.
pub const HELPER_FD: RawFd = 3;

/// The most bytes of one message: a request with every path a phase could need.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// The most sockets one answer carries (the proxy, two per capture port, two for DNS).
pub const MAX_SOCKETS: usize = 64;

/// What the helper runs, and in what jail.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub spec: SandboxSpec,
    /// The command and its arguments, looked up on the helper's `PATH` inside the jail.
    pub argv: Vec<String>,
    /// The command's working directory, inside the jail.
    pub dir: PathBuf,
    /// The host directories shown read-only (where present).
    pub system: Vec<PathBuf>,
    /// Paths under `system` shown empty: what the host's others may not read, when the
    /// jail's root is the host's (hidden.rs).
    pub hidden: Vec<PathBuf>,
    /// The command's whole environment; without it, the helper's own. A helper started
    /// ahead of its phase (warm.rs) gets it here, which also keeps secrets out of argv.
    #[serde(default)]
    pub env: Option<Vec<(OsString, OsString)>>,
}

/// One answer from the helper.
#[derive(Debug)]
pub enum Answer {
    /// The namespace's sockets, with how many of them are captured ports and DNS.
    Sockets { fds: Vec<OwnedFd>, captured: usize, dns: usize },
    /// Building the jail failed.
    Error(String),
    /// The jail was built but the command could not be started in it.
    Exec(String),
    /// The helper's processes all closed the socket.
    End,
}

pub fn send_request(socket: &OwnedFd, request: &Request) -> nix::Result<()> {
    let text = serde_json::to_vec(request).map_err(|_| nix::errno::Errno::EINVAL)?;
    send(socket, &text, &[])
}

/// Reads the one request.
pub fn receive_request(socket: RawFd) -> Result<Request, String> {
    let mut buffer = vec![0; MAX_MESSAGE];
    let mut iov = [IoSliceMut::new(&mut buffer)];
    let received = recvmsg::<()>(socket, &mut iov, None, MsgFlags::empty())
        .map_err(|errno| format!("cannot read the request on fd 3: {}", describe(errno)))?;
    if received.flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(format!("the request on fd 3 is longer than {MAX_MESSAGE} bytes"));
    }
    let length = received.bytes;
    serde_json::from_slice(&buffer[..length]).map_err(|error| format!("cannot read the request on fd 3: {error}"))
}

pub fn send_sockets(socket: RawFd, fds: &[RawFd], captured: usize, dns: usize) -> nix::Result<()> {
    let text = format!("sockets {captured} {dns}");
    send_raw(socket, text.as_bytes(), &[ControlMessage::ScmRights(fds)])
}

pub fn send_error(socket: RawFd, kind: &str, text: &str) {
    let _ = send_raw(socket, format!("{kind} {text}").as_bytes(), &[]);
}

/// Reads the next answer; the sockets arrive close-on-exec.
pub fn receive_answer(socket: &OwnedFd) -> nix::Result<Answer> {
    let mut buffer = vec![0; 64 * 1024];
    let mut iov = [IoSliceMut::new(&mut buffer)];
    let mut space = nix::cmsg_space!([RawFd; MAX_SOCKETS]);
    let received = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for message in received.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = message {
            // SAFETY: the kernel just installed these descriptors in this process for us.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let length = received.bytes;
    let text = String::from_utf8_lossy(&buffer[..length]).into_owned();
    if length == 0 {
        return Ok(Answer::End);
    }
    let (kind, rest) = text.split_once(' ').unwrap_or((&text, ""));
    Ok(match kind {
        "sockets" => {
            let mut counts = rest.split(' ').map(|n| n.parse::<usize>().unwrap_or(usize::MAX));
            let captured = counts.next().unwrap_or(usize::MAX);
            let dns = counts.next().unwrap_or(usize::MAX);
            if captured.checked_add(dns).and_then(|n| n.checked_add(1)) != Some(fds.len()) {
                return Ok(Answer::Error(format!("the helper sent {} sockets with `{text}`", fds.len())));
            }
            Answer::Sockets { fds, captured, dns }
        }
        "exec" => Answer::Exec(rest.to_string()),
        "error" => Answer::Error(rest.to_string()),
        _ => Answer::Error(format!("the helper said `{text}`")),
    })
}

fn send(socket: &OwnedFd, bytes: &[u8], cmsgs: &[ControlMessage]) -> nix::Result<()> {
    send_raw(socket.as_raw_fd(), bytes, cmsgs)
}

fn send_raw(socket: RawFd, bytes: &[u8], cmsgs: &[ControlMessage]) -> nix::Result<()> {
    let iov = [IoSlice::new(bytes)];
    loop {
        match sendmsg::<()>(socket, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno),
            Ok(_) => return Ok(()),
        }
    }
}

/// `EPERM (Operation not permitted)`.
pub fn describe(errno: nix::errno::Errno) -> String {
    format!("{errno:?} ({})", errno.desc())
}

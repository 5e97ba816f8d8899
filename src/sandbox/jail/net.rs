//! The phase's network namespace: `lo` up, a `local` default route on it for IPv4 and IPv6
//! (so a connect to any address lands on a local listener), and the listeners the egress
//! proxy serves. Runs in the helper, which still holds the namespace's capabilities.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use socket2::{Domain, Socket, Type};

use super::helper::Failure;
use crate::sandbox::PROXY_PORT;

/// The listeners, in the order `wire` sends them.
pub struct Listeners {
    pub proxy: OwnedFd,
    pub captured: Vec<OwnedFd>,
    pub dns: Vec<OwnedFd>,
}

/// Brings `lo` up and routes every address to it. IPv6 is skipped where the kernel has
/// none (then no IPv6 connection can be made at all); returns whether it is there.
pub fn configure() -> Result<bool, Failure> {
    set_loopback_up()?;
    add_local_default(libc::AF_INET as u8)
        .map_err(|errno| Failure::errno("add the IPv4 local default route", errno))?;
    match add_local_default(libc::AF_INET6 as u8) {
        Ok(()) => Ok(true),
        Err(Errno::EAFNOSUPPORT) => Ok(false),
        Err(errno) => Err(Failure::errno("add the IPv6 local default route", errno)),
    }
}

/// Opens the proxy's listener, two per capture port and the DNS sockets.
pub fn open(capture_ports: &[u16], ipv6: bool) -> Result<Listeners, Failure> {
    let proxy = tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, PROXY_PORT)))?;
    let mut captured = Vec::new();
    for &port in capture_ports {
        captured.push(tcp(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?);
        if ipv6 {
            captured.push(tcp(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))?);
        }
    }
    let mut dns = vec![udp(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 53)))?];
    if ipv6 {
        dns.push(udp(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 53)))?);
    }
    Ok(Listeners { proxy, captured, dns })
}

fn tcp(address: SocketAddr) -> Result<OwnedFd, Failure> {
    let what = || format!("listen on {address}");
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None).map_err(|e| Failure::io(&what(), &e))?;
    if address.is_ipv6() {
        socket.set_only_v6(true).map_err(|e| Failure::io(&what(), &e))?;
    }
    socket.bind(&address.into()).map_err(|e| Failure::io(&what(), &e))?;
    socket.listen(1024).map_err(|e| Failure::io(&what(), &e))?;
    Ok(socket.into())
}

fn udp(address: SocketAddr) -> Result<OwnedFd, Failure> {
    let what = || format!("bind UDP {address}");
    let socket = Socket::new(Domain::for_address(address), Type::DGRAM, None).map_err(|e| Failure::io(&what(), &e))?;
    if address.is_ipv6() {
        socket.set_only_v6(true).map_err(|e| Failure::io(&what(), &e))?;
    }
    socket.bind(&address.into()).map_err(|e| Failure::io(&what(), &e))?;
    Ok(socket.into())
}

/// `ip link set lo up`, by ioctl.
fn set_loopback_up() -> Result<(), Failure> {
    let what = "bring lo up";
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None).map_err(|e| Failure::io(what, &e))?;
    // SAFETY: ifreq is plain data, valid when zeroed.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: `request` is a valid ifreq naming `lo` for both calls.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) == -1 {
            return Err(Failure::errno(what, Errno::last()));
        }
        request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) == -1 {
            return Err(Failure::errno(what, Errno::last()));
        }
    }
    Ok(())
}

/// `ip route add local default dev lo table local` for `family`, by one netlink message.
fn add_local_default(family: u8) -> Result<(), Errno> {
    // SAFETY: the name is a NUL-terminated string.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if lo == 0 {
        return Err(Errno::last());
    }
    let message = route_message(family, lo);
    let socket = Socket::new(Domain::from(libc::AF_NETLINK), Type::RAW, Some(libc::NETLINK_ROUTE.into()))
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    let errno = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    socket.send(&message).map_err(errno)?;
    let mut answer = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    let length = socket.recv(&mut answer).map_err(errno)?;
    // SAFETY: recv initialised the first `length` bytes.
    let answer: Vec<u8> = answer[..length].iter().map(|b| unsafe { b.assume_init() }).collect();
    ack_errno(&answer)
}

/// An `RTM_NEWROUTE` request: table local, type local, scope host, any destination, via `lo`.
fn route_message(family: u8, lo: u32) -> Vec<u8> {
    const HEADER: usize = 16;
    const RTMSG: usize = 12;
    const ATTRIBUTE: usize = 8;
    let length = HEADER + RTMSG + ATTRIBUTE;
    let mut message = Vec::with_capacity(length);
    message.extend_from_slice(&(length as u32).to_ne_bytes());
    message.extend_from_slice(&libc::RTM_NEWROUTE.to_ne_bytes());
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE;
    message.extend_from_slice(&(flags as u16).to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    message.extend_from_slice(&[
        family,
        0,
        0,
        0,
        libc::RT_TABLE_LOCAL,
        libc::RTPROT_BOOT,
        libc::RT_SCOPE_HOST,
        libc::RTN_LOCAL,
    ]);
    message.extend_from_slice(&0u32.to_ne_bytes());
    // RTA_OIF: the output interface.
    message.extend_from_slice(&(ATTRIBUTE as u16).to_ne_bytes());
    message.extend_from_slice(&libc::RTA_OIF.to_ne_bytes());
    message.extend_from_slice(&lo.to_ne_bytes());
    message
}

/// The error an `NLMSG_ERROR` answer carries (0 is the ack).
fn ack_errno(answer: &[u8]) -> Result<(), Errno> {
    let field = |at: usize, size: usize| answer.get(at..at + size).ok_or(Errno::EPROTO);
    let kind = u16::from_ne_bytes(field(4, 2)?.try_into().map_err(|_| Errno::EPROTO)?);
    if kind != libc::NLMSG_ERROR as u16 {
        return Err(Errno::EPROTO);
    }
    let code = i32::from_ne_bytes(field(16, 4)?.try_into().map_err(|_| Errno::EPROTO)?);
    if code == 0 { Ok(()) } else { Err(Errno::from_raw(-code)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_message_is_what_ip_route_sends() {
        let message = route_message(libc::AF_INET as u8, 1);
        assert_eq!(message.len(), 36);
        assert_eq!(u32::from_ne_bytes(message[0..4].try_into().unwrap()), 36);
        assert_eq!(&message[16..24], &[2, 0, 0, 0, 255, 3, 254, 2]);
    }

    #[test]
    fn an_ack_is_ok_and_an_error_is_its_errno() {
        let mut answer = vec![0u8; 36];
        answer[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        assert_eq!(ack_errno(&answer), Ok(()));
        answer[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(ack_errno(&answer), Err(Errno::EPERM));
    }
}

//! The TUN ioctls the fast path needs and `tun-tap` does not offer:
//! `IFF_VNET_HDR` (every packet carries a `virtio_net_hdr`, so the kernel
//! can hand over and take TSO super-packets with checksums left to us) and
//! `TUNSETOFFLOAD` (which offloads the device advertises), descriptors
//! received over `SCM_RIGHTS`, the signal that wakes a blocked worker, and
//! socket options no safe wrapper offers (a raw ICMP socket's type filter).
//! This is the only module of felt with `unsafe`: four `ioctl(2)` calls,
//! each on a file descriptor we own, with arguments laid out as
//! `linux/if_tun.h` says; taking ownership of received descriptors; one
//! `sigaction(2)` with a handler that does nothing, and one that ignores.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

/// `struct ifreq` as TUNSETIFF reads it: a name and the flags (the rest of
/// the kernel's 40-byte union is padding here).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens `/dev/net/tun` and creates (or attaches to) TUN device `name`,
/// without packet info and with a `virtio_net_hdr` in front of every packet.
pub fn open_tun_vnet(name: &str) -> io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name `{name}`")));
    }
    let file = OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `file` is an open /dev/net/tun descriptor; TUNSETIFF reads a
    // `struct ifreq` (name NUL-terminated, flags) from the pointer, which
    // points to a live, properly sized and aligned `IfReq` for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// The offloads a TUN device accepts from the stack (`TUN_F_*`): with
/// checksum and TSO4 the kernel hands over TCP super-packets of up to 64 KiB.
pub fn set_offload(tun: &File, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: `tun` is an attached TUN descriptor; TUNSETOFFLOAD takes its
    // argument by value (an unsigned int of TUN_F_* bits), no pointer.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Sets the `virtio_net_hdr` size the device uses (10: the plain header).
pub fn set_vnet_hdr_size(tun: &File, size: libc::c_int) -> io::Result<()> {
    // SAFETY: `tun` is an attached TUN descriptor; TUNSETVNETHDRSZ reads one
    // int from the pointer, which points to `size` on our stack for the call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size as *const libc::c_int) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Makes the TUN device outlive this process (or not): a restarted agent
/// attaches to the same device, so its routes stay and packets wait in its
/// queue instead of finding no route.
pub fn set_persist(tun: &File, persist: bool) -> io::Result<()> {
    // SAFETY: `tun` is an attached TUN descriptor; TUNSETPERSIST takes its
    // argument by value (0 or 1), no pointer.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, libc::c_ulong::from(persist)) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Receives one message on `stream` and owns every descriptor it carried
/// (`SCM_RIGHTS`, up to 8), at the point they arrive: whatever the caller
/// does with them, each is closed exactly once.
pub fn recv_descriptors(stream: &std::os::unix::net::UnixStream) -> io::Result<Vec<std::os::fd::OwnedFd>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixAddr, recvmsg};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    let mut byte = [0u8; 2];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    // Room for more than anyone sends, so extras arrive (and are closed)
    // rather than being cut off by the kernel.
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let msg =
        recvmsg::<UnixAddr>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: recvmsg(SCM_RIGHTS) just installed each of these in
            // this process and its number is known only from this message;
            // nothing else refers to it, so it gets exactly one owner here.
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok(fds)
}

/// The signal that wakes a worker blocked in a read, so it sees that it
/// must stop. The data plane sends it to its own worker threads only.
const WAKE: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGUSR2;

/// Installs a handler for [`WAKE`] that does nothing and asks for no
/// restart, so a read it interrupts returns `EINTR`. Once per process.
pub fn install_wake_handler() -> io::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
    static INSTALLED: std::sync::OnceLock<Result<(), nix::errno::Errno>> = std::sync::OnceLock::new();
    extern "C" fn nothing(_: libc::c_int) {}
    let result = INSTALLED.get_or_init(|| {
        let action = SigAction::new(SigHandler::Handler(nothing), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler touches nothing, so it is async-signal-safe,
        // and no other part of felt handles this signal.
        unsafe { sigaction(WAKE, &action) }.map(drop)
    });
    result.map_err(io::Error::from)
}

/// Interrupts whatever `worker` is blocked in (see [`install_wake_handler`]).
pub fn wake(worker: &std::thread::JoinHandle<()>) {
    use std::os::unix::thread::JoinHandleExt;
    let _ = nix::sys::pthread::pthread_kill(worker.as_pthread_t(), WAKE);
}

/// Ignores SIGHUP in this process (the keeper: a `pkill -HUP` meant for
/// the agents' settings reload must not end it).
pub fn ignore_hangup() -> io::Result<()> {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_IGN installs no handler, so nothing runs in signal context.
    unsafe { signal(Signal::SIGHUP, SigHandler::SigIgn) }.map(drop).map_err(io::Error::from)
}

/// `setsockopt(2)` of `value` (a plain value or array, as the option's
/// header lays it out) on `fd`.
pub(crate) fn setsockopt<T: Copy>(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<T>()).expect("a socket option fits a socklen_t");
    // SAFETY: `fd` is an open descriptor of the caller's; the pointer is to a
    // live `T` of `len` bytes, which the kernel only reads.
    let rc = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, std::ptr::from_ref(value).cast(), len) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

//! The last steps before the command's exec: no new privileges, no capabilities (not even
//! for uid 0, whose root powers the securebits switch off), and a seccomp filter that
//! refuses the kernel interfaces a phase has no use for.

use std::collections::BTreeMap;

use nix::errno::Errno;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

use super::helper::Failure;

/// Syscalls refused with EPERM, whatever their arguments.
const DENIED: &[(&str, libc::c_long)] = &[
    // io_uring reaches sockets (AF_VSOCK among them) without the socket() syscall.
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("setns", libc::SYS_setns),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
];

/// Socket families a phase may open: local, IP (captured by the namespace) and netlink
/// (reading its own interfaces). AF_VSOCK, AF_PACKET and the rest are refused.
const FAMILIES: &[libc::c_int] = &[libc::AF_UNIX, libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK];

/// The two filters: EPERM for what is refused; ENOSYS for clone3, whose flags a filter
/// cannot read, so that the C library falls back to clone, whose flags it can.
pub struct Filters {
    refused: BpfProgram,
    clone3: BpfProgram,
}

/// Built before the fork that runs the command, which then only installs them.
pub fn filters() -> Result<Filters, Failure> {
    let arch = std::env::consts::ARCH.try_into().map_err(|e| Failure::message(&format!("seccomp: {e}")))?;
    let build = |rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32| -> Result<BpfProgram, Failure> {
        let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(errno as u32), arch)
            .map_err(|e| Failure::message(&format!("seccomp: {e}")))?;
        filter.try_into().map_err(|e: seccompiler::BackendError| Failure::message(&format!("seccomp: {e}")))
    };
    let condition = |index, op, value| {
        SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
            .map_err(|e| Failure::message(&format!("seccomp: {e}")))
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|&(_, nr)| (nr, Vec::new())).collect();
    let other_family =
        FAMILIES.iter().map(|&family| condition(0, SeccompCmpOp::Ne, family as u64)).collect::<Result<Vec<_>, _>>()?;
    let rule = |conditions| SeccompRule::new(conditions).map_err(|e| Failure::message(&format!("seccomp: {e}")));
    rules.insert(libc::SYS_socket, vec![rule(other_family)?]);
    let new_user = libc::CLONE_NEWUSER as u64;
    rules.insert(libc::SYS_unshare, vec![rule(vec![condition(0, SeccompCmpOp::MaskedEq(new_user), new_user)?])?]);
    rules.insert(libc::SYS_clone, vec![rule(vec![condition(0, SeccompCmpOp::MaskedEq(new_user), new_user)?])?]);
    let refused = build(rules, libc::EPERM)?;
    let clone3 = build([(libc::SYS_clone3, Vec::new())].into_iter().collect(), libc::ENOSYS)?;
    Ok(Filters { refused, clone3 })
}

/// Drops every capability and privilege, then installs the filters. The caller is the
/// process about to exec the command, still holding the user namespace's capabilities.
pub fn apply(filters: &Filters) -> Result<(), Failure> {
    const SECBITS: libc::c_ulong = 0xef; // NOROOT, NO_SETUID_FIXUP, NO_CAP_AMBIENT_RAISE, KEEP_CAPS off: all locked
    prctl("set the securebits", libc::PR_SET_SECUREBITS, SECBITS, 0)?;
    for capability in 0..64 {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability as libc::c_ulong, 0, 0, 0) } == -1 {
            match Errno::last() {
                Errno::EINVAL => break, // past the kernel's last capability
                errno => return Err(Failure::errno("drop the capability bounding set", errno)),
            }
        }
    }
    prctl("clear the ambient capabilities", libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0)?;
    clear_capabilities()?;
    prctl("set no_new_privs", libc::PR_SET_NO_NEW_PRIVS, 1, 0)?;
    for program in [&filters.clone3, &filters.refused] {
        seccompiler::apply_filter(program)
            .map_err(|e| Failure::message(&format!("install the seccomp filter: {e}")))?;
    }
    Ok(())
}

fn prctl(what: &str, option: libc::c_int, first: libc::c_ulong, second: libc::c_ulong) -> Result<(), Failure> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(option, first, second, 0, 0) } == -1 {
        return Err(Failure::errno(what, Errno::last()));
    }
    Ok(())
}

/// capset(2) with empty effective, permitted and inheritable sets.
fn clear_capabilities() -> Result<(), Failure> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header { version: VERSION_3, pid: 0 };
    let data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: a version-3 header with two data structs, as capset expects.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } == -1 {
        return Err(Failure::errno("drop the capabilities", Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_build_for_this_machine() {
        let filters = filters().unwrap();
        assert!(!filters.refused.is_empty());
        assert!(!filters.clone3.is_empty());
    }
}

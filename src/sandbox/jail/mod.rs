//! The jail: user, mount, PID and network namespaces, no new privileges and a seccomp filter around one phase.

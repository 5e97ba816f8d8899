//! Which program opened a connection, best effort: the client socket's inode from the
//! jail's own view of TCP (`/proc/<jail_pid>/net/tcp{,6}`), then the process among the
//! jail's descendants that holds `socket:[inode]`. Blocking file reads; run it off the
//! async workers, once per record.

use std::collections::HashMap;
use std::fs;

/// The command name (`comm`, else the first word of `cmdline`) of the process under
/// `jail_pid` that holds the TCP socket from `client_port` to `server_port`.
pub fn find_command(jail_pid: u32, client_port: u16, server_port: u16) -> Option<String> {
    let inode = ["tcp", "tcp6"].iter().find_map(|table| {
        let text = fs::read_to_string(format!("/proc/{jail_pid}/net/{table}")).ok()?;
        socket_inode(&text, client_port, server_port)
    })?;
    let target = format!("socket:[{inode}]");
    descendants(jail_pid).into_iter().find_map(|pid| {
        let holds = fs::read_dir(format!("/proc/{pid}/fd"))
            .ok()?
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target.as_str()));
        holds.then(|| command_of(pid)).flatten()
    })
}

/// The inode of the socket whose local port is `local_port` and remote port
/// `remote_port`, from a `/proc/net/tcp` table.
fn socket_inode(table: &str, local_port: u16, remote_port: u16) -> Option<u64> {
    let port = |address: &str| address.rsplit(':').next().and_then(|hex| u16::from_str_radix(hex, 16).ok());
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, inode) = (fields.get(1)?, fields.get(2)?, fields.get(9)?);
        let matches = port(local)? == local_port && port(remote)? == remote_port;
        matches.then(|| inode.parse().ok()).flatten().filter(|&inode| inode != 0)
    })
}

/// `root` and every process below it.
fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The command name may hold spaces and parentheses: the parent is the second
        // field after its last `)`.
        let Some(ppid) = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        else {
            continue;
        };
        children.entry(ppid).or_default().push(pid);
    }
    let mut found = vec![root];
    let mut next = 0;
    while next < found.len() {
        if let Some(below) = children.get(&found[next]) {
            found.extend(below.iter().copied().filter(|pid| *pid != root));
        }
        next += 1;
    }
    found
}

fn command_of(pid: u32) -> Option<String> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let comm = comm.trim();
    if !comm.is_empty() {
        return Some(comm.to_string());
    }
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let first = cmdline.split(|b| *b == 0).next().filter(|arg| !arg.is_empty())?;
    Some(String::from_utf8_lossy(first).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_socket_by_its_ports() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:0C38 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0\n\
           1: 0100007F:D431 0100007F:0C38 01 00000000:00000000 00:00000000 00000000  1000        0 222 1 0\n\
           2: 0100007F:0C38 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 333 1 0\n";
        assert_eq!(socket_inode(table, 0xD431, 0x0C38), Some(222));
        assert_eq!(socket_inode(table, 0x0C38, 0xD431), Some(333));
        assert_eq!(socket_inode(table, 1, 2), None);
        assert_eq!(socket_inode("garbage\nline with few fields", 1, 2), None);
    }

    #[test]
    fn finds_this_process_behind_its_own_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_accepted, peer) = listener.accept().unwrap();
        let me = std::process::id();
        let comm = fs::read_to_string(format!("/proc/{me}/comm")).unwrap();
        let found = find_command(me, peer.port(), listener.local_addr().unwrap().port());
        assert_eq!(found.as_deref(), Some(comm.trim()));
        drop(client);
    }
}

//! Times starting a phase's command in the jail against starting it plainly, interleaved:
//!
//! ```text
//! cargo build --release && cargo build --release --example jail_bench
//! target/release/examples/jail_bench [REPEATS=200] [HELPER=target/release/nightshift]
//! ```
//! Each repeat starts `true` both ways: plainly (`Command::spawn`, which returns once the
//! program is exec'd) and through `sandbox::jail::spawn` (which returns once it is exec'd
//! inside the jail: namespaces, mounts, listeners, seccomp). Prints the medians and p90 of
//! spawn-to-running and spawn-to-exited for both, side by side, and the jail's cost; and,
//! apart, the first jail (for a root worker it walks the system directories once).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nightshift::sandbox::{SandboxSpec, jail};

fn main() {
    let mut args = std::env::args().skip(1);
    let repeats: usize = args.next().map_or(200, |n| n.parse().expect("REPEATS is a number"));
    let helper = args.next().map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("this program's path");
        exe.parent().and_then(|dir| dir.parent()).expect("target/<profile>/examples").join("nightshift")
    });
    // The first jail of a root worker walks the system directories for what only root may
    // read (remembered after, but for /etc): timed apart from the repeats.
    let started = Instant::now();
    let probed = jail::probe(&helper);
    let first = started.elapsed();
    if let Err(error) = probed {
        eprintln!("the jail does not work here ({}): {error}", helper.display());
        std::process::exit(1);
    }
    let workspace = tempfile::tempdir().expect("a temporary directory");
    let spec = SandboxSpec {
        workspace: workspace.path().to_path_buf(),
        run_dir: workspace.path().to_path_buf(),
        paths: Vec::new(),
        home: PathBuf::from("/home/nightshift"),
        capture_ports: vec![80, 443],
        limits: Default::default(),
    };
    let argv = vec!["true".to_string()];
    let (mut plain, mut jailed) = (Times::default(), Times::default());
    for _ in 0..repeats {
        let started = Instant::now();
        let mut child = prepare(Command::new("true")).spawn().expect("spawn true");
        let running = started.elapsed();
        child.wait().expect("wait for true");
        plain.push(running, started.elapsed());

        let started = Instant::now();
        let mut jail_run =
            jail::spawn(prepare(jail::helper_command(&helper)), &spec, &argv, workspace.path()).expect("jail true");
        let running = started.elapsed();
        jail_run.child.wait().expect("wait for the jail");
        jailed.push(running, started.elapsed());
    }
    println!("{repeats} starts of `true` each, interleaved (helper {})", helper.display());
    println!("the first jail (`sandbox check`'s probe, run to its end): {first:.2?}");
    println!("{:<28} {:>12} {:>12} {:>12} {:>12}", "", "running p50", "running p90", "exited p50", "exited p90");
    plain.print("plain");
    jailed.print("jail");
    let cost = jailed.running_median().saturating_sub(plain.running_median());
    println!("the jail adds {cost:.2?} to spawn-to-running (median)");
}

/// What `run_phase` sets on every child: a clean environment, no stdin, its own group.
fn prepare(mut command: Command) -> Command {
    use std::os::unix::process::CommandExt;
    command
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    command
}

#[derive(Default)]
struct Times {
    running: Vec<Duration>,
    exited: Vec<Duration>,
}

impl Times {
    fn push(&mut self, running: Duration, exited: Duration) {
        self.running.push(running);
        self.exited.push(exited);
    }

    fn running_median(&mut self) -> Duration {
        quantile(&mut self.running, 0.5)
    }

    fn print(&mut self, name: &str) {
        let (r50, r90) = (quantile(&mut self.running, 0.5), quantile(&mut self.running, 0.9));
        let (e50, e90) = (quantile(&mut self.exited, 0.5), quantile(&mut self.exited, 0.9));
        println!("{name:<28} {r50:>12.2?} {r90:>12.2?} {e50:>12.2?} {e90:>12.2?}");
    }
}

fn quantile(times: &mut [Duration], q: f64) -> Duration {
    times.sort();
    times.get(((times.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default()
}

//! Writes N generated automation files (for load tests): `cargo run --release --example
//! generate_automations -- 1000 /tmp/automations`, then `nightshift validate /tmp/automations`.

use std::path::Path;

/// Writes `count` automations into `dir`, cycling through the trigger sources; returns `count`.
pub fn generate(dir: &Path, count: usize) -> usize {
    std::fs::create_dir_all(dir).expect("create the output directory");
    for n in 0..count {
        let trigger = match n % 4 {
            0 => format!("cron: {{ schedule: \"{} {} * * *\", timezone: Europe/Berlin }}", n % 60, n % 24),
            1 => "pagerduty: { secret: \"env:PD_SECRET\", events: [incident.triggered] }".to_string(),
            2 => "slack: { signing_secret: \"env:SLACK_SECRET\", pattern: \"^bug:\" }".to_string(),
            _ => "github: { secret: \"env:GH_SECRET\", events: [pull_request.opened] }".to_string(),
        };
        let text = format!(
            "# yaml-language-server: $schema=../schemas/automation.schema.json
name: generated-{n}
description: Generated automation number {n}
trigger:
  {trigger}
when: event.type != \"ignored-{n}\"
dedupe:
  key: \"{{{{ event.id }}}}-{n}\"
  window: 1h
task:
  agent: codex
  repo: https://example.com/acme/repo-{n}.git
  branch: \"nightshift/generated-{n}/{{{{ slug(event.id) }}}}\"
  setup: [\"cargo fetch\"]
  network:
    setup: {{ allow: [{{ preset: rust }}] }}
    agent: {{ allow: [{{ domain: api{n}.example.com, ports: [80], methods: [GET] }}] }}
  prompt: |
    Look into event {{{{ event.id }}}} for automation {n}.
    Earlier: {{{{ memory.get(\"last\") ?? \"none\" }}}}
memory:
  after_run: |
    memory.set(\"last\", run.summary);
"
        );
        std::fs::write(dir.join(format!("generated-{n:05}.yaml")), text).expect("write an automation");
    }
    count
}

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let dir = args.next().unwrap_or_else(|| "generated-automations".to_string());
    generate(Path::new(&dir), count);
    eprintln!("wrote {count} automations to {dir}");
}

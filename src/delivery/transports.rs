//! The `Transport` serve gives the outbox's sender: each message goes to the Slack, GitHub
//! or webhook client its target names, built with the settings nightshift.yaml has at the
//! time of sending (so a reload that changes `api_url` applies to the next message).

use std::sync::Arc;

use super::{BoxFuture, Message, Outcome, Target, Transport, github, slack, webhook};
use crate::catalog::Catalog;

/// Dispatches on the target's kind. `catalog` answers the current settings.
pub struct Transports {
    http: reqwest::Client,
    catalog: Box<dyn Fn() -> Arc<Catalog> + Send + Sync>,
}

impl Transports {
    pub fn new(catalog: impl Fn() -> Arc<Catalog> + Send + Sync + 'static) -> Transports {
        // No environment proxy: a message goes where its target says, nowhere else.
        let http = reqwest::Client::builder().no_proxy().build().unwrap_or_default();
        Transports { http, catalog: Box::new(catalog) }
    }
}

impl Transport for Transports {
    fn send<'a>(&'a self, message: &'a Message<'a>) -> BoxFuture<'a, Outcome> {
        let catalog = (self.catalog)();
        let http = self.http.clone();
        Box::pin(async move {
            let failed = |why: String| Outcome::Failed { why };
            match message.target {
                Target::Slack { .. } => match catalog.slack.url() {
                    Ok(url) => slack::Client::new(http, url).send(message).await,
                    Err(why) => failed(format!("slack.api_url in nightshift.yaml: {why}")),
                },
                Target::GithubComment { .. } | Target::GithubPullRequest { .. } => match catalog.github.url() {
                    Ok(url) => github::Client::new(http, url).send(message).await,
                    Err(why) => failed(format!("github.api_url in nightshift.yaml: {why}")),
                },
                Target::Webhook { .. } => {
                    webhook::Client::new(http, catalog.notify.allow_private_targets).send(message).await
                }
            }
        })
    }
}

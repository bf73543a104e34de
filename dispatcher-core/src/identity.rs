//! Whose pull request a change event speaks for: the claims of its CI job's OIDC token against
//! the event, under `[dispatcher.oidc]`.
//!
//! Every pull request's CI holds the same orchestrator login, so the login cannot say which
//! pull request sent an event. The CI job's OIDC token can: GitHub signs it for the workflow
//! run, naming its repository, its trigger and its ref (`refs/pull/<number>/merge`), and a
//! pull request's workflow, however rewritten, gets tokens for that pull request only. The
//! edge checks the signature, issuer, audience and expiry; here the claims are held against
//! what the event says.

use proto_types::{ChangeEvent, Trigger};

/// What a token whose signature, issuer, audience and expiry were checked says about the
/// workflow run that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// `owner/name`, as GitHub names the repository (`repository`).
    pub repository: String,
    /// The workflow run's trigger: `pull_request`, `push`, ... (`event_name`).
    pub event_name: String,
    /// `refs/pull/<number>/merge` for a pull request's run (`ref`).
    pub git_ref: String,
}

/// A change event's identity token, as the edge found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The event carried none.
    Absent,
    /// It carried one that did not check out (signature, issuer, audience, expiry, keys),
    /// and why.
    Invalid(String),
    Verified(TokenClaims),
}

/// Why `event` may not start a run, when `[dispatcher.oidc]` is set: only pull request events
/// need a token (pushes and drift checks are the deploy branch's login's, which
/// `deploy_orchestrator_users` names), and it must be of their repository's workflow run for
/// that very pull request. `github` is the repository's `owner/name`.
pub fn refusal(event: &ChangeEvent, github: &str, identity: &Identity) -> Option<String> {
    let Trigger::PullRequest { number, .. } = &event.trigger else {
        return None;
    };
    let Some(number) = number else {
        return Some(
            "a pull request event without its number (--pr) cannot be checked against its \
             identity token (dispatcher.oidc)"
                .to_owned(),
        );
    };
    let claims = match identity {
        Identity::Absent => {
            return Some(format!(
                "pull request #{number}'s event carries no identity token: with \
                 [dispatcher.oidc] its workflow must pass one (PIPELINES_ID_TOKEN)"
            ));
        }
        Identity::Invalid(reason) => {
            return Some(format!(
                "pull request #{number}'s identity token was refused: {reason}"
            ));
        }
        Identity::Verified(claims) => claims,
    };
    // GitHub's names are not case-sensitive.
    if !claims.repository.eq_ignore_ascii_case(github) {
        return Some(format!(
            "pull request #{number}'s identity token is of a workflow run of {:?}, not of {github:?}",
            claims.repository
        ));
    }
    if claims.event_name != "pull_request" {
        return Some(format!(
            "pull request #{number}'s identity token is of a {:?} workflow run ({:?}), not of a \
             pull request's",
            claims.event_name, claims.git_ref
        ));
    }
    let expected = format!("refs/pull/{number}/merge");
    if claims.git_ref != expected {
        return Some(format!(
            "pull request #{number}'s identity token is of the workflow run of {:?}, not of \
             {expected:?}: one pull request's CI may not submit runs for another",
            claims.git_ref
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use proto_types::Action;

    use super::*;
    use crate::testing::{event, pr, push};

    fn change(trigger: Trigger) -> ChangeEvent {
        event(trigger, &[("app", Action::Plan)], &[]).0
    }

    fn verified(repository: &str, event_name: &str, git_ref: &str) -> Identity {
        Identity::Verified(TokenClaims {
            repository: repository.to_owned(),
            event_name: event_name.to_owned(),
            git_ref: git_ref.to_owned(),
        })
    }

    #[test]
    fn a_pull_requests_own_token_vouches_for_its_event() {
        let event = change(pr(7));
        let own = verified("Acme/Infra", "pull_request", "refs/pull/7/merge");
        assert_eq!(refusal(&event, "acme/infra", &own), None);
    }

    #[test]
    fn a_token_of_anything_but_that_pull_requests_run_is_refused_saying_why() {
        let event = change(pr(7));
        for (identity, expected) in [
            (
                Identity::Absent,
                "pull request #7's event carries no identity token: with [dispatcher.oidc] its \
                 workflow must pass one (PIPELINES_ID_TOKEN)",
            ),
            (
                Identity::Invalid("ExpiredSignature".into()),
                "pull request #7's identity token was refused: ExpiredSignature",
            ),
            (
                verified("acme/other", "pull_request", "refs/pull/7/merge"),
                "pull request #7's identity token is of a workflow run of \"acme/other\", not of \
                 \"acme/infra\"",
            ),
            (
                verified("acme/infra", "push", "refs/heads/feature"),
                "pull request #7's identity token is of a \"push\" workflow run \
                 (\"refs/heads/feature\"), not of a pull request's",
            ),
            (
                verified("acme/infra", "pull_request", "refs/pull/8/merge"),
                "pull request #7's identity token is of the workflow run of \
                 \"refs/pull/8/merge\", not of \"refs/pull/7/merge\": one pull request's CI may \
                 not submit runs for another",
            ),
            (
                verified("acme/infra", "pull_request", "refs/pull/70/merge"),
                "pull request #7's identity token is of the workflow run of \
                 \"refs/pull/70/merge\", not of \"refs/pull/7/merge\": one pull request's CI \
                 may not submit runs for another",
            ),
        ] {
            assert_eq!(
                refusal(&event, "acme/infra", &identity).as_deref(),
                Some(expected)
            );
        }
    }

    #[test]
    fn a_pull_request_event_without_a_number_cannot_be_checked() {
        let mut event = change(pr(7));
        if let Trigger::PullRequest { number, .. } = &mut event.trigger {
            *number = None;
        }
        let any = verified("acme/infra", "pull_request", "refs/pull/7/merge");
        assert!(
            refusal(&event, "acme/infra", &any)
                .is_some_and(|reason| reason.contains("without its number"))
        );
    }

    #[test]
    fn pushes_need_no_token() {
        assert_eq!(
            refusal(&change(push()), "acme/infra", &Identity::Absent),
            None
        );
    }
}

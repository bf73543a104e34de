//! The versioned envelope: one format byte, then a bincode 2 body holding a [`Message`].
//!
//! The body is the [`Message`] enum rather than the bare payload, so that a message published
//! to the wrong queue is recognised as the wrong kind instead of being decoded as garbage.

use serde::{Deserialize, Serialize};

use crate::messages::{
    ApprovalOrder, CancelJob, CancelRun, ChangeEvent, ClaimReply, Job, JobEvent, LogChunk,
    RunStatus,
};

/// The only format this version writes and reads.
pub const FORMAT_V1: u8 = 1;

/// The largest message accepted. Bounded so that a hostile length prefix can never make the
/// decoder allocate more than this.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_MESSAGE_BYTES>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

/// Any message, as it travels. (No internally tagged enums anywhere below: bincode cannot
/// decode them.)
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub enum Message {
    ChangeEvent(ChangeEvent),
    Job(Job),
    JobEvent(JobEvent),
    RunStatus(RunStatus),
    ClaimReply(ClaimReply),
    CancelRun(CancelRun),
    CancelJob(CancelJob),
    ApprovalOrder(ApprovalOrder),
    LogChunk(LogChunk),
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::ChangeEvent(_) => "ChangeEvent",
            Message::Job(_) => "Job",
            Message::JobEvent(_) => "JobEvent",
            Message::RunStatus(_) => "RunStatus",
            Message::ClaimReply(_) => "ClaimReply",
            Message::CancelRun(_) => "CancelRun",
            Message::CancelJob(_) => "CancelJob",
            Message::ApprovalOrder(_) => "ApprovalOrder",
            Message::LogChunk(_) => "LogChunk",
        }
    }
}

/// The borrowed twin of [`Message`], so that encoding never clones a payload. Same variants in
/// the same order, hence the same bytes (checked by a test).
#[derive(Serialize)]
enum MessageRef<'a> {
    ChangeEvent(&'a ChangeEvent),
    Job(&'a Job),
    JobEvent(&'a JobEvent),
    RunStatus(&'a RunStatus),
    ClaimReply(&'a ClaimReply),
    CancelRun(&'a CancelRun),
    CancelJob(&'a CancelJob),
    ApprovalOrder(&'a ApprovalOrder),
    LogChunk(&'a LogChunk),
}

/// Why bytes could not become a message. Every variant is permanent: the same bytes will never
/// decode, so consumers dead-letter them rather than retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("unsupported message format {found} (this build reads format {FORMAT_V1})")]
    UnsupportedFormat { found: u8 },
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("malformed message body: {0}")]
    Malformed(String),
    #[error("{count} unexpected bytes after the message body")]
    TrailingBytes { count: usize },
    #[error("expected a {expected} message, got a {found}")]
    WrongKind {
        expected: &'static str,
        found: &'static str,
    },
}

/// A payload that can travel in the envelope.
pub trait Payload: Sized {
    const KIND: &'static str;
    #[doc(hidden)]
    fn as_message_ref(&self) -> MessageRefHandle<'_>;
    fn from_message(message: Message) -> Result<Self, DecodeError>;

    fn encode(&self) -> Vec<u8> {
        encode_ref(&self.as_message_ref().0)
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::from_message(decode(bytes)?)
    }
}

/// Opaque wrapper so that [`Payload`] can name the private borrowed enum.
#[doc(hidden)]
#[allow(missing_debug_implementations)]
pub struct MessageRefHandle<'a>(MessageRef<'a>);

macro_rules! payload {
    ($ty:ident) => {
        impl Payload for $ty {
            const KIND: &'static str = stringify!($ty);

            fn as_message_ref(&self) -> MessageRefHandle<'_> {
                MessageRefHandle(MessageRef::$ty(self))
            }

            fn from_message(message: Message) -> Result<Self, DecodeError> {
                match message {
                    Message::$ty(inner) => Ok(inner),
                    other => Err(DecodeError::WrongKind {
                        expected: Self::KIND,
                        found: other.kind(),
                    }),
                }
            }
        }
    };
}

payload!(ChangeEvent);
payload!(Job);
payload!(JobEvent);
payload!(RunStatus);
payload!(ClaimReply);
payload!(CancelRun);
payload!(CancelJob);
payload!(ApprovalOrder);
payload!(LogChunk);

/// Encodes any payload into an envelope.
pub fn encode<P: Payload>(payload: &P) -> Vec<u8> {
    payload.encode()
}

fn encode_ref(message: &MessageRef<'_>) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    // Encoding plain data into a Vec cannot fail except by exceeding the limit, which only a
    // payload larger than MAX_MESSAGE_BYTES can do; producers bound their outputs well below it.
    bincode::serde::encode_into_std_write(message, &mut out, config())
        .expect("encoding a message into memory cannot fail");
    out
}

/// Decodes an envelope. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let (&format, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if format != FORMAT_V1 {
        return Err(DecodeError::UnsupportedFormat { found: format });
    }
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    let (message, used) = bincode::serde::decode_from_slice::<Message, _>(body, config())
        .map_err(|err| DecodeError::Malformed(err.to_string()))?;
    if used != body.len() {
        return Err(DecodeError::TrailingBytes {
            count: body.len() - used,
        });
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::messages::*;

    fn change_event() -> ChangeEvent {
        ChangeEvent {
            id: Uuid::new_v4(),
            repository: "infra".into(),
            trigger: Trigger::PullRequest {
                number: Some(42),
                base_branch: "main".into(),
                head_branch: "feature/x".into(),
            },
            base_sha: "a".repeat(40),
            head_sha: "b".repeat(40),
            changes: vec![Change {
                kind: ChangeKind::UnitChanged,
                units: vec!["prod/vpc".into()],
                files: vec!["prod/vpc/main.tf".into()],
            }],
            dependencies: vec![DependencyEdge {
                unit: "prod/app".into(),
                depends_on: "prod/vpc".into(),
            }],
        }
    }

    fn job() -> Job {
        Job {
            job_id: Uuid::new_v4(),
            run_id: Uuid::new_v4(),
            repository: "infra".into(),
            account: "prod".into(),
            commit: "c".repeat(40),
            unit: "prod/vpc".into(),
            action: Action::Destroy,
            source_commit: Some("d".repeat(40)),
            attempt: 1,
            timeout_secs: 3600,
            role: ExecutorRole::Apply,
            policy_override: Some("alice: CHG-1".into()),
        }
    }

    fn job_event() -> JobEvent {
        JobEvent {
            job_id: Uuid::new_v4(),
            run_id: Uuid::new_v4(),
            attempt: 2,
            worker: "host-1".into(),
            kind: JobEventKind::Finished(JobOutcome {
                status: JobStatus::Failed,
                exit_code: Some(1),
                resource_changes: Some(ResourceCounts {
                    add: 1,
                    change: 2,
                    destroy: 3,
                }),
                output: "Error: boom\n".into(),
                duration_ms: 1234,
                log: Some("host-1:/var/log/pipelines/job.log".into()),
                policy: Some(crate::PolicyReport {
                    sets: vec![crate::PolicySetResult {
                        name: "security".into(),
                        enforced: true,
                        rules: 2,
                        denies: vec!["aws_s3_bucket.b: no buckets".into()],
                        warnings: Vec::new(),
                        error: None,
                        overridable: false,
                        overridden: None,
                    }],
                }),
                drift: Some(crate::DriftFindings {
                    drifted: true,
                    digest: "ab".repeat(32),
                    resources: vec!["null_resource.x (delete, create)".into()],
                    more: 0,
                }),
            }),
        }
    }

    fn run_status() -> RunStatus {
        RunStatus {
            run_id: Uuid::new_v4(),
            repository: "infra".into(),
            event: EventKind::Push,
            head_sha: "e".repeat(40),
            state: RunState::Failed("1 job failed".into()),
            units: vec![UnitStatus {
                unit: "prod/app".into(),
                account: "prod".into(),
                action: Action::Apply,
                job_id: Uuid::new_v4(),
                state: UnitState::Skipped("prod/vpc failed".into()),
                exit_code: None,
                resource_changes: None,
                duration_ms: None,
                worker: None,
                output_tail: None,
                attempt: 1,
                note: Some("waiting for its dependencies".into()),
                log: None,
                approval: Some(crate::ApprovalGate::Waiting {
                    approvers: vec!["alice".into()],
                    since_ms: 1,
                    expires_ms: 2,
                    policy_sets: vec!["security".into()],
                }),
            }],
        }
    }

    fn claim_reply() -> ClaimReply {
        ClaimReply {
            job_id: Uuid::new_v4(),
            attempt: 1,
            verdict: ClaimVerdict::Denied {
                reason: "cancelled".into(),
                retry: false,
            },
        }
    }

    fn round_trip<P: Payload + PartialEq + std::fmt::Debug>(payload: P) {
        let bytes = encode(&payload);
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(P::decode(&bytes).expect("decodes"), payload);
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(change_event());
        round_trip(job());
        round_trip(job_event());
        round_trip(run_status());
        round_trip(claim_reply());
        round_trip(CancelRun {
            run_id: Uuid::new_v4(),
            reason: "wrong change".into(),
            requested_by: "ops@host".into(),
        });
        round_trip(crate::ApprovalOrder {
            run_id: Uuid::new_v4(),
            unit: Some("prod/app".into()),
            verdict: crate::ApprovalVerdict::Reject,
            reason: "not during the freeze".into(),
            requested_by: "alice@host".into(),
        });
        round_trip(crate::LogChunk {
            job_id: Uuid::new_v4(),
            run_id: Uuid::new_v4(),
            attempt: 1,
            worker: "w-1".into(),
            stream: 1_764_000_000_000,
            offset: 4096,
            text: "null_resource.apply: Creating...\n".into(),
            end: true,
        });
        round_trip(CancelJob {
            job_id: Uuid::new_v4(),
            attempt: 2,
            reason: "cancelled by ops@host".into(),
        });
        round_trip(JobEvent {
            kind: JobEventKind::Released {
                reason: "worker shutting down".into(),
            },
            ..job_event()
        });
    }

    #[test]
    fn borrowed_and_owned_enums_encode_identically() {
        // decode() reads `Message`; encode() writes `MessageRef`. Prove they agree per variant.
        let job = job();
        let bytes = encode(&job);
        assert_eq!(decode(&bytes).expect("decodes"), Message::Job(job));
    }

    #[test]
    fn a_message_of_another_kind_is_refused() {
        let bytes = encode(&job());
        assert_eq!(
            ChangeEvent::decode(&bytes),
            Err(DecodeError::WrongKind {
                expected: "ChangeEvent",
                found: "Job"
            })
        );
    }

    #[test]
    fn empty_input_future_format_and_trailing_bytes_are_typed_errors() {
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        let mut future = encode(&job());
        future[0] = 2;
        assert_eq!(
            decode(&future),
            Err(DecodeError::UnsupportedFormat { found: 2 })
        );
        let mut trailing = encode(&job());
        trailing.extend_from_slice(&[0, 0]);
        assert_eq!(
            decode(&trailing),
            Err(DecodeError::TrailingBytes { count: 2 })
        );
    }

    #[test]
    fn every_truncation_of_a_valid_message_is_an_error_not_a_panic() {
        let bytes = encode(&job_event());
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
    }

    #[test]
    fn a_huge_length_prefix_does_not_allocate() {
        // Variant 0 (ChangeEvent), then a uuid, then a string claiming u64::MAX bytes.
        let mut bytes = vec![FORMAT_V1, 0];
        bytes.extend_from_slice(&[16]);
        bytes.extend_from_slice(&[0; 16]);
        bytes.push(255);
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode(&bytes), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn pseudo_random_garbage_never_panics() {
        // A cheap deterministic generator: the fuzz target (issue 7) goes much further.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 96) as usize;
            let mut bytes: Vec<u8> = (0..len)
                .map(|i| (state.rotate_left(i as u32 * 5) & 0xff) as u8)
                .collect();
            if let Some(first) = bytes.first_mut() {
                *first = FORMAT_V1;
            }
            let _ = decode(&bytes);
        }
    }

    // --- Fuzzing with proptest. CI runs a few thousand cases; for the full profile:
    //     PIPELINES_FUZZ_CASES=100000 cargo test --release -p proto-types fuzz
    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        fn cases() -> u32 {
            std::env::var("PIPELINES_FUZZ_CASES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(2_000)
        }

        /// Valid encodings of every kind of message, to mutate.
        fn seeds() -> Vec<Vec<u8>> {
            vec![
                encode(&change_event()),
                encode(&job()),
                encode(&job_event()),
                encode(&run_status()),
                encode(&claim_reply()),
            ]
        }

        #[derive(Debug, Clone)]
        enum Mutation {
            Flip { at: usize, bits: u8 },
            Insert { at: usize, byte: u8 },
            Delete { at: usize },
            Truncate { at: usize },
        }

        fn mutation() -> impl Strategy<Value = Mutation> {
            prop_oneof![
                (any::<usize>(), 1u8..=255).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
                (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
                any::<usize>().prop_map(|at| Mutation::Delete { at }),
                any::<usize>().prop_map(|at| Mutation::Truncate { at }),
            ]
        }

        fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
            let len = bytes.len().max(1);
            match *mutation {
                Mutation::Flip { at, bits } => {
                    if let Some(byte) = bytes.get_mut(at % len) {
                        *byte ^= bits;
                    }
                }
                Mutation::Insert { at, byte } => bytes.insert(at % (bytes.len() + 1), byte),
                Mutation::Delete { at } => {
                    if !bytes.is_empty() {
                        bytes.remove(at % len);
                    }
                }
                Mutation::Truncate { at } => bytes.truncate(at % len),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

            /// Any bytes at all: a message or a typed error, never a panic, never a huge allocation.
            #[test]
            fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
                let _ = decode(&bytes);
            }

            /// Valid messages, damaged: decoding still returns, and whatever decodes is a whole
            /// message that survives its own round trip.
            #[test]
            fn damaged_messages_decode_or_fail_cleanly(
                seed in 0usize..5,
                mutations in prop::collection::vec(mutation(), 1..8),
            ) {
                let mut bytes = seeds()[seed].clone();
                for m in &mutations {
                    apply(&mut bytes, m);
                }
                if let Ok(message) = decode(&bytes) {
                    let again = match &message {
                        Message::ChangeEvent(m) => encode(m),
                        Message::Job(m) => encode(m),
                        Message::JobEvent(m) => encode(m),
                        Message::RunStatus(m) => encode(m),
                        Message::ClaimReply(m) => encode(m),
                        Message::CancelRun(m) => encode(m),
                        Message::CancelJob(m) => encode(m),
                        Message::ApprovalOrder(m) => encode(m),
                        Message::LogChunk(m) => encode(m),
                    };
                    prop_assert_eq!(decode(&again).ok(), Some(message));
                }
            }
        }
    }
}

//! `spindle:mail` as a capability: `send_mail = true` grants it; `[smtp]`
//! selects an SMTP server, `.eml` files in the outbox otherwise.

use super::component::{Mail, MailState, wit};
use super::{Mailer, SmtpSettings};
use crate::capabilities::capability::{BackendEnv, Capability, GrantEntry, GrantError, HasState};
use wasmtime::component::Linker;

impl Capability for Mail {
    const NAME: &'static str = "spindle:mail";
    const GRANT_KEYS: &'static [&'static str] = &["send_mail"];
    const CONFIG_SECTION: Option<&'static str> = Some("smtp");
    const BACKEND_NAME: &'static str = "the mail server";

    /// Whether the component may send.
    type Grant = bool;
    type Backend = Mailer;
    type State = MailState;

    fn grant(entry: &GrantEntry<'_>) -> Result<Self::Grant, GrantError> {
        entry.get("send_mail")
    }

    async fn backend(env: &BackendEnv<'_>) -> anyhow::Result<Self::Backend> {
        let smtp: Option<SmtpSettings> = env.section::<Self, _>()?;
        Ok(Mailer::from_config(smtp.as_ref(), env.state_dir)?)
    }

    fn describe(backend: &Self::Backend) -> Option<String> {
        Some(backend.describe())
    }

    async fn ready(backend: &Self::Backend) -> anyhow::Result<()> {
        Ok(backend.ping().await?)
    }

    fn add_to_linker<T: HasState<Self>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        fn state<T: HasState<Mail>>(t: &mut T) -> &MailState {
            t.view().state
        }
        wit::add_to_linker::<T, Mail>(linker, state::<T>)
    }

    fn prepare(backend: &Self::Backend, grant: &Self::Grant, id: &str) -> Self::State {
        MailState::new(id, backend.clone(), *grant)
    }

    fn is_granted(grant: &Self::Grant) -> bool {
        *grant
    }

    fn missing_grant(import: &str, grant: &Self::Grant) -> Option<&'static str> {
        (import.starts_with("spindle:mail/") && !grant).then_some("send_mail = true")
    }
}

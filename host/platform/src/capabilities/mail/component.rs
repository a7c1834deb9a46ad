//! The component side of mail: `spindle:mail/mailer`, allowed only for
//! components whose manifest entry says `send_mail = true`.

use super::{Email, MailError, Mailer};
use std::sync::Arc;
use wasmtime::component::{Accessor, HasData};

mod bindings {
    wasmtime::component::bindgen!({
        path: "src/capabilities/mail/wit",
        world: "spindle:mail/mail-client",
        imports: { default: trappable },
    });
}

pub(super) use bindings::spindle::mail::mailer::{self as wit, Error, Message};

/// Whether one component may send, and through what.
#[derive(Clone)]
pub struct MailState {
    component: Arc<str>,
    mailer: Mailer,
    allowed: bool,
}

impl MailState {
    pub fn new(component: &str, mailer: Mailer, allowed: bool) -> Self {
        MailState {
            component: component.into(),
            mailer,
            allowed,
        }
    }

    fn granted(&self) -> Result<Mailer, Error> {
        if self.allowed {
            return Ok(self.mailer.clone());
        }
        tracing::warn!(component = %self.component, "mail refused: send_mail not granted");
        Err(Error::PermissionDenied(format!(
            "component `{}` may not send mail; set send_mail = true in its spin.toml entry",
            self.component
        )))
    }
}

fn to_wit(e: MailError) -> Error {
    // A 4xx reply means "later": the caller should retry, as for an outage.
    if e.is_transient() {
        return Error::Unavailable(e.to_string());
    }
    match e {
        MailError::InvalidAddress { .. } | MailError::InvalidMessage(_) => {
            Error::InvalidAddress(e.to_string())
        }
        MailError::Rejected { .. } => Error::Rejected(e.to_string()),
        MailError::Unavailable { .. } | MailError::Outbox { .. } | MailError::Config(_) => {
            Error::Unavailable(e.to_string())
        }
    }
}

/// The `HasData` marker for `spindle:mail/mailer`.
pub struct Mail;

impl HasData for Mail {
    type Data<'a> = &'a MailState;
}

impl wit::Host for &MailState {}

impl<T> wit::HostWithStore<T> for Mail {
    async fn send(
        store: &Accessor<T, Self>,
        message: Message,
    ) -> wasmtime::Result<Result<String, Error>> {
        let mailer = match store.with(|mut view| view.get().granted()) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        let email = Email {
            to: message.to,
            subject: message.subject,
            text: message.text,
            message_id: message.message_id,
        };
        Ok(mailer.send(&email).await.map_err(to_wit))
    }
}

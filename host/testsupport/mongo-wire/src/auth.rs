//! Users, SCRAM-SHA-256 logins and MongoDB's built-in roles.
//!
//! Authentication always works (as on a `mongod` without `--auth`, a client
//! may log in); access control is enforced only when the server was started
//! with [`crate::Options::auth`], which also makes the first user: `root` on
//! `admin`, as the official image's `MONGO_INITDB_ROOT_USERNAME` does. There
//! is no localhost exception.
//!
//! Users are created and dropped with `createUser`/`dropUser` as mongosh's
//! `db.createUser` sends them and live in their authentication database. A
//! command is allowed when one of the user's roles grants every action it
//! needs on the command's database. Simplifications: only built-in roles
//! (no `createRole`), one user per connection (a new login replaces the
//! old), cursors are not tied to their user, and `listDatabases` lists all
//! databases to any authenticated user.

use std::collections::BTreeMap;

use bson::{Binary, Bson, Document, doc, spec::BinarySubtype};

use crate::error::{CmdResult, CommandError};
use crate::scram::{self, ClientFirst, Exchange};

/// What a command does to a database, the unit roles grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Find,
    Insert,
    Update,
    Remove,
    CreateCollection,
    DropCollection,
    CreateIndex,
    DropIndex,
    ListCollections,
    ListIndexes,
    KillCursors,
    DropDatabase,
    CreateUser,
    DropUser,
}

use Action::*;

const READ: &[Action] = &[Find, ListCollections, ListIndexes, KillCursors];
const READ_WRITE: &[Action] = &[
    Find,
    ListCollections,
    ListIndexes,
    KillCursors,
    Insert,
    Update,
    Remove,
    CreateCollection,
    DropCollection,
    CreateIndex,
    DropIndex,
];
const DB_ADMIN: &[Action] = &[
    ListCollections,
    ListIndexes,
    CreateCollection,
    DropCollection,
    CreateIndex,
    DropIndex,
    DropDatabase,
];
const USER_ADMIN: &[Action] = &[CreateUser, DropUser];
const ALL: &[Action] = &[
    Find,
    Insert,
    Update,
    Remove,
    CreateCollection,
    DropCollection,
    CreateIndex,
    DropIndex,
    ListCollections,
    ListIndexes,
    KillCursors,
    DropDatabase,
    CreateUser,
    DropUser,
];

/// A built-in role. The `…AnyDatabase` roles and `root` exist only on
/// `admin` and reach every database but `local` and `config` (`root`: all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Read,
    ReadWrite,
    DbAdmin,
    UserAdmin,
    DbOwner,
    ReadAnyDatabase,
    ReadWriteAnyDatabase,
    DbAdminAnyDatabase,
    UserAdminAnyDatabase,
    Root,
}

impl Role {
    fn parse(name: &str, db: &str) -> CmdResult<Role> {
        let role = match name {
            "read" => Role::Read,
            "readWrite" => Role::ReadWrite,
            "dbAdmin" => Role::DbAdmin,
            "userAdmin" => Role::UserAdmin,
            "dbOwner" => Role::DbOwner,
            "readAnyDatabase" => Role::ReadAnyDatabase,
            "readWriteAnyDatabase" => Role::ReadWriteAnyDatabase,
            "dbAdminAnyDatabase" => Role::DbAdminAnyDatabase,
            "userAdminAnyDatabase" => Role::UserAdminAnyDatabase,
            "root" => Role::Root,
            _ => return Err(CommandError::role_not_found(name, db)),
        };
        if role.any_database() && db != "admin" {
            return Err(CommandError::role_not_found(name, db));
        }
        Ok(role)
    }

    fn any_database(self) -> bool {
        matches!(
            self,
            Role::ReadAnyDatabase
                | Role::ReadWriteAnyDatabase
                | Role::DbAdminAnyDatabase
                | Role::UserAdminAnyDatabase
                | Role::Root
        )
    }

    fn grants(self, action: Action) -> bool {
        let actions: &[Action] = match self {
            Role::Read | Role::ReadAnyDatabase => READ,
            Role::ReadWrite | Role::ReadWriteAnyDatabase => READ_WRITE,
            Role::DbAdmin | Role::DbAdminAnyDatabase => DB_ADMIN,
            Role::UserAdmin | Role::UserAdminAnyDatabase => USER_ADMIN,
            Role::DbOwner => {
                return [READ_WRITE, DB_ADMIN, USER_ADMIN]
                    .iter()
                    .any(|set| set.contains(&action));
            }
            Role::Root => ALL,
        };
        actions.contains(&action)
    }
}

#[derive(Debug, Clone)]
struct Grant {
    role: Role,
    db: String,
}

impl Grant {
    fn reaches(&self, db: &str) -> bool {
        match self.role {
            Role::Root => true,
            r if r.any_database() => !matches!(db, "local" | "config"),
            _ => self.db == db,
        }
    }
}

#[derive(Debug)]
struct User {
    credential: scram::Credential,
    grants: Vec<Grant>,
}

/// A user's name and authentication database.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UserId {
    pub db: String,
    pub name: String,
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.db)
    }
}

/// Every user of the server.
#[derive(Debug, Default)]
pub struct Users {
    users: BTreeMap<UserId, User>,
}

impl Users {
    /// The first user of a server started with auth on.
    pub fn with_root(name: &str, password: &str) -> CmdResult<Users> {
        let mut users = Users::default();
        users.users.insert(
            UserId {
                db: "admin".into(),
                name: name.into(),
            },
            User {
                credential: scram::Credential::new(password)?,
                grants: vec![Grant {
                    role: Role::Root,
                    db: "admin".into(),
                }],
            },
        );
        Ok(users)
    }

    fn allows(&self, user: &UserId, db: &str, action: Action) -> bool {
        self.users.get(user).is_some_and(|u| {
            u.grants
                .iter()
                .any(|g| g.reaches(db) && g.role.grants(action))
        })
    }
}

/// A connection's login state.
#[derive(Debug, Default)]
pub struct Session {
    user: Option<UserId>,
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    user: UserId,
    /// `None` once the proof was accepted and only the client's empty
    /// final message (no `skipEmptyExchange`) is awaited.
    exchange: Option<Exchange>,
    skip_empty_exchange: bool,
}

/// The one conversation id in use: a connection runs one login at a time.
const CONVERSATION_ID: i32 = 1;

fn sasl_reply(done: bool, payload: &[u8]) -> Document {
    doc! {
        "conversationId": CONVERSATION_ID,
        "done": done,
        "payload": Binary { subtype: BinarySubtype::Generic, bytes: payload.to_vec() },
    }
}

fn payload_of<'a>(cmd: &'a Document, name: &str) -> CmdResult<&'a [u8]> {
    match cmd.get("payload") {
        Some(Bson::Binary(b)) => Ok(&b.bytes),
        Some(Bson::String(s)) => Ok(s.as_bytes()),
        _ => Err(CommandError::failed_to_parse(format!(
            "BSON field '{name}.payload' is missing or not binary data"
        ))),
    }
}

/// `saslStart` on the authentication database `db`.
pub fn sasl_start(
    users: &Users,
    session: &mut Session,
    db: &str,
    cmd: &Document,
) -> CmdResult<Document> {
    session.pending = None;
    let mechanism = cmd.get_str("mechanism").unwrap_or_default();
    let first = ClientFirst::parse(payload_of(cmd, "saslStart")?).map_err(|e| {
        tracing::info!(db, error = %e.0, "authentication failed");
        CommandError::authentication_failed()
    })?;
    let id = UserId {
        db: db.to_string(),
        name: first.username.clone(),
    };
    let Some(user) = users.users.get(&id) else {
        tracing::info!(user = %id, mechanism, "authentication failed: no such user");
        return Err(CommandError::authentication_failed());
    };
    if mechanism != scram::MECHANISM {
        return Err(CommandError::new(
            334,
            "MechanismUnavailable",
            format!(
                "Unable to use {mechanism} based authentication for user without any {mechanism} credentials registered"
            ),
        ));
    }
    let skip_empty_exchange = cmd
        .get_document("options")
        .ok()
        .and_then(|o| o.get("skipEmptyExchange"))
        .is_some_and(crate::query::truthy);
    let (exchange, server_first) = Exchange::start(user.credential.clone(), first)?;
    session.pending = Some(Pending {
        user: id,
        exchange: Some(exchange),
        skip_empty_exchange,
    });
    Ok(sasl_reply(false, server_first.as_bytes()))
}

/// `saslContinue`: checks the proof, then (without `skipEmptyExchange`)
/// takes the client's empty last message.
pub fn sasl_continue(session: &mut Session, db: &str, cmd: &Document) -> CmdResult<Document> {
    let payload = payload_of(cmd, "saslContinue")?;
    let conversation = cmd.get("conversationId").and_then(|v| match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        _ => None,
    });
    let Some(mut pending) = session.pending.take() else {
        return Err(CommandError::new(
            17,
            "ProtocolError",
            "No SASL session state found",
        ));
    };
    if conversation != Some(i64::from(CONVERSATION_ID)) || pending.user.db != db {
        tracing::info!(user = %pending.user, "authentication failed: saslContinue for another conversation");
        return Err(CommandError::authentication_failed());
    }
    match pending.exchange.take() {
        Some(exchange) => {
            let server_final = exchange.finish(payload).map_err(|e| {
                tracing::info!(user = %pending.user, error = %e.0, "authentication failed");
                CommandError::authentication_failed()
            })?;
            let done = pending.skip_empty_exchange;
            if done {
                tracing::debug!(user = %pending.user, "authenticated");
                session.user = Some(pending.user);
            } else {
                session.pending = Some(pending);
            }
            Ok(sasl_reply(done, server_final.as_bytes()))
        }
        None => {
            tracing::debug!(user = %pending.user, "authenticated");
            session.user = Some(pending.user);
            Ok(sasl_reply(true, b""))
        }
    }
}

/// The handshake's auth parts: `saslSupportedMechs` for the user a client
/// asks about, and the first SCRAM step of a `speculativeAuthenticate`
/// (the Rust driver always sends one with credentials; on any failure it is
/// left out of the reply and the driver logs in the ordinary way).
pub fn extend_hello(users: &Users, session: &mut Session, cmd: &Document, reply: &mut Document) {
    if let Ok(asked) = cmd.get_str("saslSupportedMechs")
        && let Some((db, name)) = asked.split_once('.')
    {
        let id = UserId {
            db: db.into(),
            name: name.into(),
        };
        if users.users.contains_key(&id) {
            reply.insert("saslSupportedMechs", vec![scram::MECHANISM]);
        }
    }
    if let Ok(speculative) = cmd.get_document("speculativeAuthenticate") {
        let db = speculative.get_str("db").unwrap_or("admin");
        match sasl_start(users, session, db, speculative) {
            Ok(first) => {
                reply.insert("speculativeAuthenticate", first);
            }
            Err(err) => tracing::debug!(error = %err, "speculative authentication declined"),
        }
    }
}

/// Roles as `createUser` takes them: `"name"` (on the command's database)
/// or `{role, db}`.
fn parse_grants(cmd: &Document, db: &str) -> CmdResult<Vec<Grant>> {
    let roles = match cmd.get("roles") {
        Some(Bson::Array(roles)) => roles,
        _ => {
            return Err(CommandError::bad_value(
                "\"createUser\" command requires a \"roles\" array",
            ));
        }
    };
    roles
        .iter()
        .map(|r| {
            let (name, role_db) = match r {
                Bson::String(name) => (name.as_str(), db),
                Bson::Document(d) => match (d.get_str("role"), d.get_str("db")) {
                    (Ok(name), Ok(role_db)) => (name, role_db),
                    _ => {
                        return Err(CommandError::bad_value(format!(
                            "a role must be a name or {{role, db}}, not {d}"
                        )));
                    }
                },
                other => {
                    return Err(CommandError::bad_value(format!(
                        "a role must be a name or {{role, db}}, not {other}"
                    )));
                }
            };
            Ok(Grant {
                role: Role::parse(name, role_db)?,
                db: role_db.to_string(),
            })
        })
        .collect()
}

/// `createUser` as `db.createUser({user, pwd, roles})` sends it.
pub fn create_user(
    users: &mut Users,
    session: &Session,
    enforce: bool,
    db: &str,
    cmd: &Document,
) -> CmdResult<Document> {
    let name = cmd
        .get_str("createUser")
        .map_err(|_| CommandError::bad_value("\"createUser\" must name the user"))?;
    let password = cmd.get_str("pwd").map_err(|_| {
        CommandError::bad_value(
            "Must provide a 'pwd' field for all user documents, except those with '$external' as the user's source db",
        )
    })?;
    if cmd
        .get("digestPassword")
        .is_some_and(|v| !crate::query::truthy(v))
    {
        return Err(CommandError::bad_value(
            "Use of SCRAM-SHA-256 requires undigested passwords",
        ));
    }
    if let Ok(mechanisms) = cmd.get_array("mechanisms")
        && !mechanisms
            .iter()
            .any(|m| m.as_str() == Some(scram::MECHANISM))
    {
        return Err(CommandError::bad_value(
            "mongo-wire stores SCRAM-SHA-256 credentials only; include it in \"mechanisms\"",
        ));
    }
    let grants = parse_grants(cmd, db)?;
    // Granting a role needs user administration on the role's database.
    if enforce
        && let Some(refused) = grants
            .iter()
            .find(|g| !session.may(users, &g.db, CreateUser))
    {
        tracing::debug!(role_db = %refused.db, "createUser: may not grant a role there");
        return Err(not_authorized(db, cmd));
    }
    let id = UserId {
        db: db.into(),
        name: name.into(),
    };
    if users.users.contains_key(&id) {
        return Err(CommandError::new(
            51003,
            "Location51003",
            format!("User \"{id}\" already exists"),
        ));
    }
    let credential = scram::Credential::new(password)?;
    users.users.insert(id, User { credential, grants });
    Ok(Document::new())
}

pub fn drop_user(users: &mut Users, db: &str, cmd: &Document) -> CmdResult<Document> {
    let name = cmd
        .get_str("dropUser")
        .map_err(|_| CommandError::bad_value("\"dropUser\" must name the user"))?;
    let id = UserId {
        db: db.into(),
        name: name.into(),
    };
    users
        .users
        .remove(&id)
        .map(|_| Document::new())
        .ok_or_else(|| CommandError::user_not_found(name, db))
}

impl Session {
    fn may(&self, users: &Users, db: &str, action: Action) -> bool {
        self.user
            .as_ref()
            .is_some_and(|u| users.allows(u, db, action))
    }
}

/// What a command needs: `None` for the handshake and login commands,
/// which anyone may run, else every listed action on the command's
/// database (an empty list: any logged-in user).
fn required(name: &str, cmd: &Document) -> Option<Vec<Action>> {
    let upsert = |statements: &str| {
        cmd.get_array(statements).is_ok_and(|s| {
            s.iter().any(|st| {
                st.as_document()
                    .and_then(|d| d.get("upsert"))
                    .is_some_and(crate::query::truthy)
            })
        })
    };
    Some(match name {
        "hello" | "isMaster" | "ismaster" | "saslStart" | "saslContinue" | "ping" | "buildInfo"
        | "buildinfo" | "endSessions" => return None,
        "listDatabases" => vec![],
        "find" | "getMore" | "count" | "distinct" | "aggregate" => vec![Find],
        "listCollections" => vec![ListCollections],
        "listIndexes" => vec![ListIndexes],
        "killCursors" => vec![KillCursors],
        "insert" => vec![Insert],
        "update" if upsert("updates") => vec![Update, Insert],
        "update" => vec![Update],
        "delete" => vec![Remove],
        "findAndModify" | "findandmodify" => {
            if cmd.get("remove").is_some_and(crate::query::truthy) {
                vec![Find, Remove]
            } else if cmd.get("upsert").is_some_and(crate::query::truthy) {
                vec![Find, Update, Insert]
            } else {
                vec![Find, Update]
            }
        }
        "create" => vec![CreateCollection],
        "drop" => vec![DropCollection],
        "createIndexes" => vec![CreateIndex],
        "dropIndexes" | "deleteIndexes" => vec![DropIndex],
        "dropDatabase" => vec![DropDatabase],
        "createUser" => vec![CreateUser],
        "dropUser" => vec![DropUser],
        // Unknown commands fail as such, whoever sends them.
        _ => return None,
    })
}

/// Fields left out of the command shown in refusals: write payloads (which
/// `mongod` receives as document sequences, outside the command it prints)
/// and the password.
const NOT_SHOWN: &[&str] = &["documents", "updates", "deletes", "pwd"];

fn not_authorized(db: &str, cmd: &Document) -> CommandError {
    let shown: Document = cmd
        .iter()
        .filter(|(k, _)| !NOT_SHOWN.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    CommandError::unauthorized(format!("not authorized on {db} to execute command {shown}"))
}

/// Access control for one command on `db`, `mongod`'s way: code 13 both
/// for a missing login and for missing privileges.
pub fn authorize(
    users: &Users,
    session: &Session,
    db: &str,
    name: &str,
    cmd: &Document,
) -> CmdResult<()> {
    let Some(actions) = required(name, cmd) else {
        return Ok(());
    };
    if session.user.is_none() {
        return Err(CommandError::unauthorized(format!(
            "Command {name} requires authentication"
        )));
    }
    if actions.iter().all(|a| session.may(users, db, *a)) {
        Ok(())
    } else {
        Err(not_authorized(db, cmd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users_with(grants: &[(&str, &str)]) -> (Users, Session) {
        let mut users = Users::default();
        let id = UserId {
            db: "admin".into(),
            name: "app".into(),
        };
        let grants = grants
            .iter()
            .map(|(role, db)| Grant {
                role: Role::parse(role, db).unwrap(),
                db: db.to_string(),
            })
            .collect();
        users.users.insert(
            id.clone(),
            User {
                credential: scram::Credential::new("pw").unwrap(),
                grants,
            },
        );
        let session = Session {
            user: Some(id),
            pending: None,
        };
        (users, session)
    }

    fn allowed(users: &Users, session: &Session, db: &str, cmd: Document) -> bool {
        let name = cmd.keys().next().unwrap().clone();
        authorize(users, session, db, &name, &cmd).is_ok()
    }

    #[test]
    fn roles_grant_what_mongod_grants() {
        let find = || doc! { "find": "fs.files" };
        let insert = || doc! { "insert": "fs.files", "documents": [{}] };
        let index = || doc! { "createIndexes": "fs.files", "indexes": [] };
        let drop_db = || doc! { "dropDatabase": 1 };

        let (u, s) = users_with(&[("read", "videos")]);
        assert!(allowed(&u, &s, "videos", find()));
        assert!(!allowed(&u, &s, "videos", insert()));
        assert!(!allowed(&u, &s, "mp3s", find()));

        let (u, s) = users_with(&[("readWrite", "videos")]);
        assert!(allowed(&u, &s, "videos", insert()));
        assert!(allowed(&u, &s, "videos", index()));
        assert!(!allowed(&u, &s, "videos", drop_db()));

        let (u, s) = users_with(&[("dbAdmin", "videos")]);
        assert!(allowed(&u, &s, "videos", index()));
        assert!(allowed(&u, &s, "videos", drop_db()));
        assert!(!allowed(&u, &s, "videos", find()));

        let (u, s) = users_with(&[("dbOwner", "videos")]);
        for cmd in [
            find(),
            insert(),
            index(),
            drop_db(),
            doc! { "createUser": "x" },
        ] {
            assert!(allowed(&u, &s, "videos", cmd));
        }

        let (u, s) = users_with(&[("readWriteAnyDatabase", "admin")]);
        assert!(allowed(&u, &s, "anything", insert()));
        assert!(!allowed(&u, &s, "local", find()));
        assert!(!allowed(&u, &s, "anything", doc! { "createUser": "x" }));

        let (u, s) = users_with(&[("readAnyDatabase", "admin")]);
        assert!(allowed(&u, &s, "anything", find()));
        assert!(!allowed(&u, &s, "anything", insert()));

        let (u, s) = users_with(&[("userAdminAnyDatabase", "admin")]);
        assert!(allowed(&u, &s, "videos", doc! { "createUser": "x" }));
        assert!(!allowed(&u, &s, "videos", find()));

        let (u, s) = users_with(&[("root", "admin")]);
        assert!(allowed(&u, &s, "local", drop_db()));

        // Handshake and login commands need nobody.
        let anonymous = Session::default();
        assert!(allowed(&u, &anonymous, "admin", doc! { "ping": 1 }));
        assert!(allowed(&u, &anonymous, "admin", doc! { "saslStart": 1 }));
        let err = authorize(&u, &anonymous, "videos", "find", &find()).unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            (13, "Command find requires authentication")
        );
    }

    #[test]
    fn refusals_name_the_database_and_hide_payloads() {
        let (u, s) = users_with(&[("readWrite", "videos")]);
        let cmd = doc! { "insert": "fs.chunks", "documents": [{ "data": "secret" }], "$db": "spindle-deploys" };
        let err = authorize(&u, &s, "spindle-deploys", "insert", &cmd).unwrap_err();
        assert_eq!(err.code, 13);
        assert!(
            err.message.starts_with(
                "not authorized on spindle-deploys to execute command { \"insert\": \"fs.chunks\""
            ),
            "{}",
            err.message
        );
        assert!(!err.message.contains("secret"), "{}", err.message);
    }

    #[test]
    fn any_database_roles_exist_only_on_admin() {
        assert!(Role::parse("readWriteAnyDatabase", "admin").is_ok());
        let err = Role::parse("readWriteAnyDatabase", "videos").unwrap_err();
        assert_eq!(err.code, 31);
        assert_eq!(
            err.message,
            "Could not find role: readWriteAnyDatabase@videos"
        );
        assert_eq!(Role::parse("owner", "videos").unwrap_err().code, 31);
    }
}

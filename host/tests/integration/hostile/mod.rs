//! The hostile-client suite: a real `spindle up` on embedded defaults,
//! attacked over real sockets the way a signed-up user with a loopback
//! socket could. Every answer must be a JSON 4xx (or the documented
//! 503/429/408), never a 500, a reset or a crash, and an honest client
//! keeps being served throughout.

mod admin;
mod budget;
mod connections;
mod grants;
mod login;
mod quota;
mod requests;

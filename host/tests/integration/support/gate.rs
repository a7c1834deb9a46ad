//! A TCP gate in front of a test server: it forwards connections while
//! open; closed, it cuts every connection and refuses new ones (nothing
//! listens on its port), which is what a client sees of a stopped server.
//! For the in-memory test servers (MongoDB wire protocol, SMTP), whose data
//! would not survive a real stop, and for a server that "comes up" at an
//! address a host was told to use before ([`Gate::open_at`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Gate {
    addr: SocketAddr,
    /// `host:port` of the server behind the gate.
    target: String,
    running: Mutex<Option<Running>>,
}

struct Running {
    accept: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Gate {
    /// Opens a gate on a free loopback port, forwarding to `target`.
    pub async fn open_to(target: impl Into<String>) -> Gate {
        Gate::open_at(0, target).await
    }

    /// Opens a gate on loopback `port` (0: a free one), forwarding to `target`.
    pub async fn open_at(port: u16, target: impl Into<String>) -> Gate {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("gate port");
        let addr = listener.local_addr().expect("gate address");
        let gate = Gate {
            addr,
            target: target.into(),
            running: Mutex::new(None),
        };
        gate.serve(listener);
        gate
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every connection and stops listening.
    pub fn close(&self) {
        if let Some(running) = self.running.lock().unwrap().take() {
            running.accept.abort();
            for c in running.connections.lock().unwrap().drain(..) {
                c.abort();
            }
        }
    }

    /// Listens again on the same port.
    pub async fn reopen(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("gate {}: rebinding: {e}", self.addr);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("gate {}: cannot listen again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let target = self.target.clone();
        let tracked = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut tracked = tracked.lock().unwrap();
                tracked.retain(|t| !t.is_finished());
                tracked.push(task);
            }
        });
        *self.running.lock().unwrap() = Some(Running {
            accept,
            connections,
        });
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.close();
    }
}

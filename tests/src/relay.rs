//! A TCP relay the tests can cut: a daemon given the relay's address
//! instead of Consul's (or a server's) loses that peer when the relay
//! stops, while everything else keeps talking to it directly. Stopping
//! closes every relayed connection and refuses new ones (they are accepted
//! and closed at once, so the port stays the relay's); resuming relays
//! again.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::{reserve_port, PortLease};

pub struct Relay {
    listen: SocketAddr,
    _port: PortLease,
    target: SocketAddr,
    stopped: Arc<AtomicBool>,
    /// Fires to end the connections relayed so far.
    generation: Arc<Mutex<CancellationToken>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// On 127.0.0.1.
    pub async fn start(target: SocketAddr) -> Relay {
        Relay::start_on(IpAddr::from([127, 0, 0, 1]), target).await
    }

    /// On `ip` (a namespace host's root-side address, say, which the
    /// namespaces reach while they cannot reach 127.0.0.1).
    pub async fn start_on(ip: IpAddr, target: SocketAddr) -> Relay {
        let port = reserve_port();
        let listen = SocketAddr::new(ip, port.port());
        let listener = TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| panic!("relay on {listen}: {e}"));
        let stopped = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let task = {
            let (stopped, generation) = (stopped.clone(), generation.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    };
                    if stopped.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let end = generation.lock().unwrap().clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = end.cancelled() => {}
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        }
                    });
                }
            })
        };
        Relay {
            listen,
            _port: port,
            target,
            stopped,
            generation,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// `http://127.0.0.1:<port>`, for a Consul address.
    pub fn http_addr(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Cuts every relayed connection and refuses new ones.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let mut g = self.generation.lock().unwrap();
        g.cancel();
        *g = CancellationToken::new();
    }

    pub fn resume(&self) {
        self.stopped.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
        self.task.abort();
    }
}

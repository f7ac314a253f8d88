//! The PROXY protocol header (HAProxy's v1 text or v2 binary form) that an L4 load balancer
//! puts in front of each connection it forwards: where the client really is. With it, the
//! per-IP limits and logs see the device, not the balancer. Parsing is the `ppp` crate's; this
//! module only reads exactly the header's bytes off the socket, never a byte of TLS after it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// The longest header we wait for: a v1 line is at most 107 bytes; a v2 header with the
/// address block of any family and a few TLVs fits easily.
const MAX_HEADER: usize = 536;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("the connection closed before its PROXY header was complete")]
    Closed,
    #[error("no valid PROXY protocol header: {0}")]
    Invalid(String),
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY header at the start of `stream` and returns the client address it names,
/// or `None` for a header without one (v2 LOCAL health checks, v1 UNKNOWN): then the TCP peer
/// stands. Consumes exactly the header.
pub async fn read_client(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    use ppp::{HeaderResult, PartialResult};
    use tokio::io::AsyncReadExt;

    let mut buf = [0u8; MAX_HEADER];
    let (len, client) = loop {
        stream.readable().await?;
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        let parsed = HeaderResult::parse(&buf[..n]);
        if parsed.is_incomplete() {
            if n == MAX_HEADER {
                return Err(ProxyHeaderError::Invalid("header too long".into()));
            }
            // Peeked bytes keep the socket readable: wait a moment for the rest instead of
            // spinning. Balancers send the header in one segment, so this is rare.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        break match parsed {
            HeaderResult::V1(Ok(h)) => {
                let client = match h.addresses {
                    ppp::v1::Addresses::Tcp4(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v1::Addresses::Tcp6(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v1::Addresses::Unknown => None,
                };
                (h.header.len(), client)
            }
            HeaderResult::V2(Ok(h)) => {
                let client = match (h.command, h.addresses) {
                    (ppp::v2::Command::Local, _) => None,
                    (_, ppp::v2::Addresses::IPv4(a)) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    (_, ppp::v2::Addresses::IPv6(a)) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    _ => None,
                };
                (h.header.len(), client)
            }
            HeaderResult::V1(Err(e)) => return Err(ProxyHeaderError::Invalid(e.to_string())),
            HeaderResult::V2(Err(e)) => return Err(ProxyHeaderError::Invalid(e.to_string())),
        };
    };
    let mut consumed = vec![0u8; len];
    stream.read_exact(&mut consumed).await?;
    Ok(client)
}

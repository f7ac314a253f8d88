//! What the kernel knows about a TCP connection that no safe API exposes: how many bytes the
//! peer has acknowledged (`tcpi_bytes_acked`, Linux 4.1+) and whether the connection is still
//! established. The one `unsafe` block of the crate lives here: a `getsockopt(TCP_INFO)` into a
//! zeroed `libc::tcp_info`, on a descriptor the caller borrows for the call.

use std::io;
use std::os::fd::BorrowedFd;

/// A reading of the connection's acknowledgement state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckInfo {
    /// Bytes the peer has acknowledged since the connection started (a FIN counts one).
    pub bytes_acked: u64,
    /// More of what we sent may still be acknowledged: the connection is established, or
    /// closing with our FIN (and the data before it) not yet acknowledged. False once our FIN
    /// was acknowledged (everything was) or the connection was reset.
    pub open: bool,
}

/// Reads [`AckInfo`] for the TCP socket `fd`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn read(fd: BorrowedFd<'_>) -> io::Result<AckInfo> {
    use std::os::fd::AsRawFd;
    // SAFETY: `tcp_info` is a plain C struct of integers, for which all-zero bytes are valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `fd` is a live descriptor for the duration of the borrow; `info` and `len`
    // describe a writable buffer of exactly `len` bytes, which the kernel fills at most.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8;
    if (len as usize) < needed {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel's TCP_INFO has no tcpi_bytes_acked (Linux 4.1+)",
        ));
    }
    // include/net/tcp_states.h: ESTABLISHED 1, FIN_WAIT1 4, CLOSE_WAIT 8, LAST_ACK 9,
    // CLOSING 11. FIN_WAIT2 and TIME_WAIT follow an acknowledged FIN; CLOSE, a reset.
    let open = matches!(info.tcpi_state, 1 | 4 | 8 | 9 | 11);
    Ok(AckInfo {
        bytes_acked: info.tcpi_bytes_acked,
        open,
    })
}

/// Elsewhere the kernel does not say: acknowledgement falls back to "written".
#[cfg(not(target_os = "linux"))]
pub fn read(_fd: BorrowedFd<'_>) -> io::Result<AckInfo> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "acknowledged-byte counts need Linux",
    ))
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn counts_what_the_peer_acknowledged() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert_eq!(read(server.as_fd()).unwrap().bytes_acked, 0);
        server.write_all(&[7u8; 5000]).unwrap();
        let mut got = vec![0u8; 5000];
        client.read_exact(&mut got).unwrap();
        // Loopback acknowledges as the data arrives; give the ACK a moment all the same.
        let mut acked = 0;
        for _ in 0..200 {
            acked = read(server.as_fd()).unwrap().bytes_acked;
            if acked == 5000 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(acked, 5000);
        assert!(read(server.as_fd()).unwrap().open);
    }
}

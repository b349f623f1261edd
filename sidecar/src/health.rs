//! `oidc-edge health`: asks a running sidecar's `/healthz`, for container
//! health checks in an image that has no shell, curl or wget.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);

/// 0 when `GET /healthz` at `address` answers 200 within 3 s, else 1 with
/// the reason on stderr.
pub fn run(address: &str) -> ExitCode {
    match probe(address) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("health: {address}: {why}");
            ExitCode::from(1)
        }
    }
}

fn probe(address: &str) -> Result<(), String> {
    let target: SocketAddr = address
        .to_socket_addrs()
        .map_err(|e| format!("not an address ({e}); write host:port"))?
        .next()
        .ok_or("the name has no address")?;
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut head = [0u8; 32];
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let status = std::str::from_utf8(&head[..read]).unwrap_or("").split(' ').nth(1).unwrap_or("").to_owned();
    if status == "200" {
        Ok(())
    } else {
        Err(format!("/healthz answered {:?}", if status.is_empty() { "nothing" } else { status.as_str() }))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn serve_once(answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(answer.as_bytes());
        });
        address
    }

    #[test]
    fn only_a_200_is_healthy() {
        assert_eq!(super::probe(&serve_once("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")), Ok(()));
        let e = super::probe(&serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n")).unwrap_err();
        assert!(e.contains("503"), "{e}");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = listener.local_addr().unwrap().to_string();
        drop(listener);
        assert!(super::probe(&closed).unwrap_err().contains("connect"));
        assert!(super::probe("no-port").unwrap_err().contains("host:port"));
    }
}

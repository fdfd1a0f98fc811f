//! The QMP side of peer-to-peer mode: hand QEMU one end of a socket pair as a D-Bus display
//! client (`getfd` with the fd as SCM_RIGHTS, then `add_client` with protocol
//! `@dbus-display`). QEMU runs the D-Bus server side of that socket; the caller keeps the other
//! end and authenticates on it as the client.
//!
//! Every step is bounded by a timeout, every line by [`MAX_LINE`], and QEMU's error replies come
//! back with their text.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::UnixStream;

use crate::QemuError;

/// The longest QMP line accepted (QEMU's replies here are a few hundred bytes).
const MAX_LINE: u64 = 1 << 20;

/// Lines (events) skipped while waiting for one reply before the peer counts as broken.
const MAX_SKIPPED: usize = 1024;

/// A QMP connection in command mode.
struct Qmp {
    reader: BufReader<UnixStream>,
    path: PathBuf,
    timeout: Duration,
    next_id: u64,
}

fn excerpt(line: &str) -> String {
    let line = line.trim_end();
    let mut s: String = line.chars().take(80).collect();
    if s.len() < line.len() {
        s.push('…');
    }
    format!("{s:?}")
}

impl Qmp {
    /// Connect, read the greeting and leave capabilities negotiation mode.
    async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QemuError> {
        let stream = match tokio::time::timeout(timeout, UnixStream::connect(path)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(QemuError::QmpConnect {
                    path: path.to_owned(),
                    source,
                })
            }
            Err(_) => {
                return Err(QemuError::QmpTimeout {
                    path: path.to_owned(),
                    waiting: "the connection",
                    timeout,
                })
            }
        };
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            path: path.to_owned(),
            timeout,
            next_id: 0,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let greeting = qmp.read_json("the QMP greeting", deadline).await?;
        if greeting.get("QMP").is_none() {
            return Err(qmp.not_qmp(format!(
                "its first message is not a QMP greeting: {}",
                excerpt(&greeting.to_string())
            )));
        }
        qmp.execute("qmp_capabilities", None, None).await?;
        Ok(qmp)
    }

    fn not_qmp(&self, detail: String) -> QemuError {
        QemuError::NotQmp {
            path: self.path.clone(),
            detail,
        }
    }

    /// One line of JSON, by `deadline`.
    async fn read_json(
        &mut self,
        waiting: &'static str,
        deadline: tokio::time::Instant,
    ) -> Result<Value, QemuError> {
        let mut line = String::new();
        let reader = &mut self.reader;
        let read = async {
            let mut limited = reader.take(MAX_LINE);
            limited.read_line(&mut line).await
        };
        match tokio::time::timeout_at(deadline, read).await {
            Err(_) => Err(QemuError::QmpTimeout {
                path: self.path.clone(),
                waiting,
                timeout: self.timeout,
            }),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                Err(self.not_qmp("it sent something that is not UTF-8 text".to_owned()))
            }
            Ok(Err(source)) => Err(QemuError::QmpIo {
                path: self.path.clone(),
                source,
            }),
            Ok(Ok(0)) => Err(self.not_qmp(format!("it closed the connection before {waiting}"))),
            Ok(Ok(_)) if !line.ends_with('\n') => Err(self.not_qmp(format!(
                "a line longer than {MAX_LINE} bytes while waiting for {waiting}"
            ))),
            Ok(Ok(_)) => serde_json::from_str(&line)
                .map_err(|_| self.not_qmp(format!("it sent {} (not JSON)", excerpt(&line)))),
        }
    }

    /// Run `command` and return its `return` value; QEMU's `error` reply becomes
    /// [`QemuError::QmpCommand`]. With `fd`, the command goes out in one `sendmsg` that carries
    /// the descriptor (SCM_RIGHTS), as `getfd` needs. The whole exchange (events QEMU sends in
    /// between included) is bounded by the timeout.
    async fn execute(
        &mut self,
        command: &'static str,
        arguments: Option<Value>,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Value, QemuError> {
        self.next_id += 1;
        let id = format!("scanoutd-{}", self.next_id);
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        let timeout = self.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = self.reader.get_mut();
        let write = async {
            let mut sent = 0;
            if let Some(fd) = fd {
                sent = stream
                    .async_io(Interest::WRITABLE, || send_with_fd(stream, &bytes, fd))
                    .await?;
            }
            // The rest (all of it without an fd): a plain write.
            stream.write_all(&bytes[sent..]).await
        };
        match tokio::time::timeout_at(deadline, write).await {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(QemuError::QmpIo {
                    path: self.path.clone(),
                    source,
                })
            }
            Err(_) => {
                return Err(QemuError::QmpTimeout {
                    path: self.path.clone(),
                    waiting: command,
                    timeout,
                })
            }
        }
        for _ in 0..MAX_SKIPPED {
            let reply = self.read_json(command, deadline).await?;
            if reply.get("event").is_some() {
                continue;
            }
            // A reply without our id answers a command sent before negotiation failed, or is
            // not ours: skip it.
            if reply.get("id").and_then(Value::as_str) != Some(id.as_str()) {
                tracing::debug!(reply = %reply, "unexpected QMP message skipped");
                continue;
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
                return Err(QemuError::QmpCommand {
                    command,
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(self.not_qmp(format!(
                "its reply to {command} has neither return nor error: {}",
                excerpt(&reply.to_string())
            )));
        }
        Err(self.not_qmp(format!(
            "more than {MAX_SKIPPED} messages without a reply to {command}"
        )))
    }
}

/// `sendmsg` of `bytes` with `fd` as SCM_RIGHTS; returns the bytes sent (the descriptor goes
/// with the first of them).
fn send_with_fd(stream: &UnixStream, bytes: &[u8], fd: BorrowedFd<'_>) -> std::io::Result<usize> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::mem::MaybeUninit;
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("no room for SCM_RIGHTS"));
    }
    let iov = [std::io::IoSlice::new(bytes)];
    Ok(sendmsg(
        stream.as_fd(),
        &iov,
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

/// Connect to QEMU's QMP socket at `path` and attach a new D-Bus display client to it. Returns
/// our end of the socket pair; QEMU runs the D-Bus server side of the other end (and waits for
/// our authentication). Each QMP step is bounded by `timeout`.
pub(crate) async fn add_dbus_client(
    path: &Path,
    timeout: Duration,
) -> Result<StdUnixStream, QemuError> {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut qmp = Qmp::connect(path, timeout).await?;
    let (ours, theirs) = StdUnixStream::pair()?;
    let fdname = format!(
        "scanoutd-dbus-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    qmp.execute(
        "getfd",
        Some(json!({ "fdname": fdname })),
        Some(theirs.as_fd()),
    )
    .await?;
    // QEMU holds its own copy now; only it may keep that end open, so that its exit closes ours.
    drop(theirs);
    // add_client takes the fd out of the monitor's table whether or not it succeeds.
    qmp.execute(
        "add_client",
        Some(json!({ "protocol": "@dbus-display", "fdname": fdname })),
        None,
    )
    .await
    .map_err(|e| match e {
        QemuError::QmpCommand { desc, .. } => QemuError::AddClient {
            path: path.to_owned(),
            desc,
        },
        e => e,
    })?;
    tracing::debug!(path = %path.display(), fdname, "QEMU accepted the D-Bus display client");
    Ok(ours)
}

#[cfg(test)]
mod tests {
    use std::io::{IoSliceMut, Write};
    use std::mem::MaybeUninit;
    use std::os::unix::net::UnixListener;

    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

    use super::*;

    /// One QMP command as a fake QEMU receives it: the JSON and how many fds came with it.
    fn recv_command(s: &StdUnixStream) -> (Value, usize) {
        let mut line = Vec::new();
        let mut fds = 0;
        while !line.ends_with(b"\n") {
            let mut buf = [0u8; 4096];
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let got = recvmsg(
                s,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::empty(),
            )
            .unwrap();
            assert!(got.bytes > 0, "client closed");
            for msg in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = msg {
                    for fd in received {
                        // What QEMU gets must be a socket (our end's peer).
                        let st = rustix::fs::fstat(&fd).unwrap();
                        assert_eq!(
                            rustix::fs::FileType::from_raw_mode(st.st_mode),
                            rustix::fs::FileType::Socket
                        );
                        fds += 1;
                    }
                }
            }
            line.extend_from_slice(&buf[..got.bytes]);
        }
        (serde_json::from_slice(&line).unwrap(), fds)
    }

    /// A fake QEMU: greeting, an event before the first reply, a reply with another id, the fd
    /// on getfd, and an error on add_client whose text must come back.
    #[tokio::test]
    async fn qmp_dialogue_with_a_fake_qemu() {
        let dir = std::env::temp_dir().join(format!("sq-qmpunit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": [\"oob\"]}}\n")
                .unwrap();
            let mut log = Vec::new();
            for _ in 0..3 {
                let (cmd, fds) = recv_command(&s);
                let name = cmd["execute"].as_str().unwrap().to_owned();
                let id = cmd["id"].clone();
                let reply = match name.as_str() {
                    "qmp_capabilities" => format!(
                        "{{\"event\": \"RESUME\", \"data\": {{}}}}\n\
                         {{\"return\": {{}}, \"id\": \"someone-else\"}}\n\
                         {{\"return\": {{}}, \"id\": {id}}}\n"
                    ),
                    "getfd" => format!("{{\"return\": {{}}, \"id\": {id}}}\n"),
                    _ => format!(
                        "{{\"error\": {{\"class\": \"GenericError\", \"desc\": \"boom\"}}, \
                         \"id\": {id}}}\n"
                    ),
                };
                w.write_all(reply.as_bytes()).unwrap();
                log.push((name, cmd["arguments"].clone(), fds));
            }
            log
        });
        let err = add_dbus_client(&path, Duration::from_secs(5))
            .await
            .expect_err("add_client fails");
        let log = server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        match &err {
            QemuError::AddClient { desc, .. } => assert_eq!(desc, "boom"),
            e => panic!("{e}"),
        }
        assert!(err.to_string().contains("p2p=yes"), "{err}");
        let names: Vec<(&str, usize)> = log.iter().map(|(n, _, f)| (n.as_str(), *f)).collect();
        assert_eq!(
            names,
            [("qmp_capabilities", 0), ("getfd", 1), ("add_client", 0)]
        );
        let fdname = log[1].1["fdname"].as_str().unwrap();
        assert_eq!(log[2].1["fdname"].as_str(), Some(fdname));
        assert_eq!(log[2].1["protocol"].as_str(), Some("@dbus-display"));
    }
}

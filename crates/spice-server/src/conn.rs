//! One linked channel's socket: framed reads of client messages, batched writes with a stall
//! timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use spice_proto::{ChannelType, ClientMsg, ServerMsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::{Metrics, ServerError};

pub(crate) struct Conn {
    pub rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    pub rbuf: BytesMut,
    wbuf: Vec<u8>,
    pub channel: ChannelType,
    pub peer: SocketAddr,
    metrics: Arc<Metrics>,
    stall: Duration,
    max_msg: usize,
}

impl Conn {
    pub fn new(
        stream: tokio::net::TcpStream,
        channel: ChannelType,
        peer: SocketAddr,
        leftover: BytesMut,
        metrics: Arc<Metrics>,
        stall: Duration,
        max_msg: usize,
    ) -> Self {
        let (rd, wr) = stream.into_split();
        Conn {
            rd,
            wr,
            rbuf: leftover,
            wbuf: Vec::new(),
            channel,
            peer,
            metrics,
            stall,
            max_msg,
        }
    }

    /// Append a message to the write batch.
    pub fn queue(&mut self, msg: &ServerMsg) {
        msg.encode(&mut self.wbuf);
    }

    /// The write batch, for encoders that append a message without building it first.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.wbuf
    }

    pub fn out_len(&self) -> usize {
        self.wbuf.len()
    }

    /// Write the batch. A client that accepts no byte for the stall timeout is an error.
    /// Returns how many bytes went out.
    pub async fn flush(&mut self) -> Result<usize, ServerError> {
        if self.wbuf.is_empty() {
            return Ok(0);
        }
        let mut off = 0;
        while off < self.wbuf.len() {
            // The timeout is per write call: a slow but moving client is fine, a stopped one
            // is not.
            let n = match tokio::time::timeout(self.stall, self.wr.write(&self.wbuf[off..])).await {
                Ok(Ok(0)) => return Err(ServerError::Io(std::io::ErrorKind::WriteZero.into())),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    self.metrics.stalled_disconnect();
                    return Err(ServerError::Stalled(self.stall));
                }
            };
            off += n;
            self.metrics.add_sent(self.channel, n);
        }
        let total = self.wbuf.len();
        self.wbuf.clear();
        // Do not keep a huge buffer around after one full-frame update.
        if self.wbuf.capacity() > 4 * 1024 * 1024 {
            self.wbuf.shrink_to(64 * 1024);
        }
        Ok(total)
    }

    /// Queue and flush one message.
    pub async fn send(&mut self, msg: &ServerMsg) -> Result<usize, ServerError> {
        self.queue(msg);
        self.flush().await
    }

    /// Record bytes just read into `rbuf` (after `rd.read_buf`). `Ok(false)` on EOF.
    pub fn received(&mut self, n: usize) -> bool {
        self.metrics.add_received(self.channel, n);
        n > 0
    }

    /// Take the next complete client message from the read buffer, if there is one.
    pub fn next_message(&mut self) -> Result<Option<ClientMsg>, ServerError> {
        let Some((ty, body_start, total)) = spice_proto::decode_frame(&self.rbuf, self.max_msg)?
        else {
            return Ok(None);
        };
        let msg = ClientMsg::decode(self.channel, ty, &self.rbuf[body_start..total]);
        self.rbuf.advance(total);
        Ok(Some(msg?))
    }

    /// Read more bytes (cancel-safe). `Ok(false)` on EOF.
    pub async fn read_more(&mut self) -> Result<bool, ServerError> {
        let n = self.rd.read_buf(&mut self.rbuf).await?;
        Ok(self.received(n))
    }
}

//! The host side of the protocol against a hostile agent: whatever bytes come back, the
//! client's handshake, every request's answer handling and the stdio stream attach must
//! return typed errors, never panic. Half of the inputs start with a valid `Hello` so that
//! the requests after the handshake are reached too.
#![no_main]

use std::io::{self, Read, Write};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use peapod::protocol::client::{Client, Timeouts, attach_stream};
use peapod::protocol::{
    PROTOCOL_VERSION, ProcessRef, ProcessSpec, Response, StreamKind, encode_frame,
};

/// An agent that answers with the fuzzer's bytes and swallows what the host sends.
struct Agent<'a> {
    replies: &'a [u8],
}

impl Read for Agent<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.replies.read(buf)
    }
}

impl Write for Agent<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Timeouts for Agent<'_> {
    fn set_read_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }

    fn set_write_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Arbitrary, Debug)]
enum Call {
    Start,
    Exec,
    Wait,
    Signal,
    Stats,
    Remove,
    Shutdown,
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    greet: bool,
    calls: Vec<Call>,
    stream: u8,
    replies: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let mut bytes = Vec::new();
    if input.greet {
        let hello = Response::Hello {
            version: PROTOCOL_VERSION,
            agent: "fuzz".into(),
        };
        bytes = encode_frame(&hello).expect("hello encodes");
    }
    bytes.extend_from_slice(input.replies);

    // A stdio attach reads one answer.
    let kinds = [
        StreamKind::Stdin,
        StreamKind::Stdout,
        StreamKind::Stderr,
        StreamKind::Pty,
    ];
    let kind = kinds[usize::from(input.stream) % kinds.len()];
    let mut agent = Agent {
        replies: input.replies,
    };
    if let Err(e) = attach_stream(&mut agent, &ProcessRef::container("c"), kind) {
        let _ = e.to_string();
    }

    let mut client = match Client::handshake(Agent { replies: &bytes }) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = client.agent().len();
    let process = ProcessRef::container("c");
    let exec = ProcessSpec {
        args: vec!["true".into()],
        env: Vec::new(),
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        additional_gids: Vec::new(),
        tty: false,
        stdin: false,
    };
    for call in input.calls.iter().take(16) {
        let shown = match call {
            Call::Start => client.start_container("c").map(|_| ()),
            Call::Exec => client.exec("c", "e", &exec).map(|_| ()),
            Call::Wait => client.wait(&process).map(|_| ()),
            Call::Signal => client.signal(&process, 15),
            Call::Stats => client.stats("c").map(|_| ()),
            Call::Remove => client.remove_container("c"),
            Call::Shutdown => client.shutdown(),
        };
        if let Err(e) = shown {
            let _ = e.to_string();
            let _ = e.wire_kind();
        }
    }
});

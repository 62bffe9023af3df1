//! Control-plane RPC plumbing: the postcard codec that the generated tonic services use,
//! and the name of the metadata header that carries the cluster token.
//!
//! Why postcard over tonic instead of protobuf: one set of Rust types serves the state
//! machine, the wire and the tests, and no `protoc` is needed to build (docs/control-plane.md).

use bytes::{Buf, BufMut};
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// gRPC metadata key carrying the shared cluster token on every control-plane call.
pub const TOKEN_HEADER: &str = "x-pond-token";

#[derive(Debug)]
pub struct PostcardEncoder<T>(PhantomData<T>);

impl<T: serde::Serialize> Encoder for PostcardEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let bytes = postcard::to_stdvec(&item)
            .map_err(|e| Status::internal(format!("encode control message: {e}")))?;
        buf.put_slice(&bytes);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[derive(Debug)]
pub struct PostcardDecoder<U>(PhantomData<U>);

impl<U: serde::de::DeserializeOwned> Decoder for PostcardDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let len = buf.remaining();
        if len > crate::limits::CONTROL_MESSAGE_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "control message of {len} bytes"
            )));
        }
        let bytes = buf.copy_to_bytes(len);
        let item = postcard::from_bytes(&bytes)
            .map_err(|e| Status::invalid_argument(format!("malformed control message: {e}")))?;
        Ok(Some(item))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// `application/grpc` with postcard bodies.
#[derive(Debug, Clone)]
pub struct PostcardCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for PostcardCodec<T, U> {
    fn default() -> Self {
        PostcardCodec(PhantomData)
    }
}

impl<T, U> Codec for PostcardCodec<T, U>
where
    T: serde::Serialize + Send + 'static,
    U: serde::de::DeserializeOwned + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = PostcardEncoder<T>;
    type Decoder = PostcardDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        PostcardEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        PostcardDecoder(PhantomData)
    }
}

/// Generated tonic client and server for the `pond.Meta` service (see `build.rs`).
pub mod meta_service {
    include!(concat!(env!("OUT_DIR"), "/pond.Meta.rs"));
}

//! The protobuf codec of the apps' own services: prost's, except that a request that cannot be
//! decoded (malformed bytes, a string that is not UTF-8) is the caller's mistake, so it is
//! answered INVALID_ARGUMENT, not the INTERNAL prost's codec reports (which would tell clients
//! and alerts that the server is broken).

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use crate::domain::text::excerpt;

/// The codec build.rs names for TaskService and NotificationService.
#[derive(Debug, Clone)]
pub(crate) struct CallerCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for CallerCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for CallerCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CallerDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CallerDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// prost's decoder with decode errors reported as INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub(crate) struct CallerDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for CallerDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            Status::invalid_argument(format!(
                "the message is not valid protobuf for this method ({})",
                excerpt(status.message(), 200)
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

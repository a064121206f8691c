//! [`ResponseBody`]: the inner service's body, passed through untouched, or a body the
//! layer made itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::sse::SseBody;

pin_project! {
    /// The response body of a [`StreamService`](crate::StreamService): the inner service's
    /// body `B` unchanged, a Server-Sent-Events stream, or a short body of the layer's own
    /// (a refusal's reason, or nothing for a WebSocket upgrade).
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Sse { body: SseBody },
        Full { data: Option<Bytes> },
    }
}

/// A body the layer prepared before knowing the inner service's body type.
// It lives only until the response is built, where the body moves inline into the
// response body: boxing the stream would cost an allocation and a pointer per stream.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Prepared {
    Sse(SseBody),
    Full(Option<Bytes>),
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn prepared(prepared: Prepared) -> Self {
        let kind = match prepared {
            Prepared::Sse(body) => Kind::Sse { body },
            Prepared::Full(data) => Kind::Full { data },
        };
        Self { kind }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Sse { body } => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(|never| match never {}))),
            KindProj::Full { data } => Poll::Ready(data.take().map(|data| Ok(Frame::data(data)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Sse { .. } => false,
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Sse { .. } => SizeHint::default(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "Inner",
            Kind::Sse { .. } => "Sse",
            Kind::Full { .. } => "Full",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

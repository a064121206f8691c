//! [`Body`]: the body of a request that [`serve`](super::serve) passes to the service.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

/// The body of a request from [`serve`](super::serve): hyper's body of the request, or
/// none at all for a Server-Sent-Events request answered on the bare socket.
///
/// axum's `Router` and any service generic over its request body accept it as it is.
#[derive(Debug, Default)]
pub struct Body {
    incoming: Option<Incoming>,
}

impl Body {
    pub(super) fn incoming(incoming: Incoming) -> Self {
        Self {
            incoming: Some(incoming),
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match &mut self.get_mut().incoming {
            Some(incoming) => Pin::new(incoming).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

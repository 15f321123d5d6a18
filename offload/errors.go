package offload

import "errors"

var (
	// ErrMalformed reports a frame whose bytes do not hold what its net
	// header says they do: no IP header where the offload needs one, a
	// transport header past the end, csum_start not at the transport
	// header.
	ErrMalformed = errors.New("malformed frame")

	// ErrShortBuffer reports output buffers too few or too small for the
	// segments of a frame.
	ErrShortBuffer = errors.New("buffer too short")

	// ErrUnsupported reports a well-formed frame the software fallbacks do
	// not handle (an IPv6 routing header still to be followed, whose final
	// destination the checksum would need).
	ErrUnsupported = errors.New("not supported by the software offloads")

	// ErrNotNegotiated reports an offload the guest asked for without
	// having negotiated its feature.
	ErrNotNegotiated = errors.New("offload not negotiated")

	// ErrBadList reports an --offloads list ParseOfferList cannot read.
	ErrBadList = errors.New("invalid offload list")
)

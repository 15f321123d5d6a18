package tap

import "golang.org/x/sys/unix"

// CheckDriver asks the kernel's TUN driver whether it offers every flag
// Create and Open need (TUNGETFEATURES on /dev/net/tun; unlike Probe it
// creates no device), for a readiness check such as a CNI plugin's
// STATUS. A missing flag is a *MissingFeaturesError, which matches
// ErrNotSupported; a driver that cannot be opened is an *OpError.
func CheckDriver() error {
	fd, err := openTunFd()
	if err != nil {
		return &OpError{Device: tunDevice, Queue: -1, Op: "open", Err: err}
	}
	defer unix.Close(fd)
	flags, err := tunGetFeatures(fd)
	if err != nil {
		return &OpError{Device: tunDevice, Queue: -1, Op: "TUNGETFEATURES", Err: err}
	}
	return checkFeatures(flags)
}

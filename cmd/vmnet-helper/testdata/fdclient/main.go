// Command fdclient is the serve-fds client the vmnet-helper tests run in
// another process (and as other users): it asks for a TAP with
// fdpass.Get, proves the files carry traffic with an ARP exchange when
// asked to, and prints what happened as one JSON line.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"time"

	"github.com/vmnet-dev/vmnet/backend/fdpass"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

type result struct {
	Name    string `json:"name"`
	Files   int    `json:"files"`
	VnetHdr int    `json:"vnet_hdr"`
	Refused bool   `json:"refused"`
	Error   string `json:"error"`
	ARP     string `json:"arp"`
	UID     int    `json:"uid"`
}

func main() {
	socket := flag.String("socket", "", "serve-fds socket")
	name := flag.String("name", "vm%d", "TAP name or template")
	queues := flag.Int("queues", 1, "queues")
	bridge := flag.String("bridge", "", "bridge")
	arpTo := flag.String("arp", "", "IPv4 address on the bridge to ARP for")
	hold := flag.Bool("hold", false, "keep the TAP's files open until standard input closes")
	flag.Parse()

	r := result{UID: os.Getuid()}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tap, err := fdpass.Get(ctx, *socket, fdpass.Request{Name: *name, Queues: *queues, Bridge: *bridge})
	if err != nil {
		r.Error = err.Error()
		r.Refused = errors.Is(err, fdpass.ErrRefused)
	} else {
		r.Name, r.Files, r.VnetHdr = tap.Name, len(tap.Files), tap.VnetHdr
		if *arpTo != "" {
			mac := net.HardwareAddr{0x02, 0, 0, 0x12, 0x34, 0x56}
			src := net.ParseIP(*arpTo).To4()
			src = net.IPv4(src[0], src[1], src[2], 99)
			if err := testutil.ARPExchange(tap.Files, tap.VnetHdr, mac, src, net.ParseIP(*arpTo), 10*time.Second); err != nil {
				r.ARP = err.Error()
			} else {
				r.ARP = "ok"
			}
		}
		if *hold {
			defer tap.Close()
		} else {
			tap.Close()
		}
	}
	json.NewEncoder(os.Stdout).Encode(r)
	if *hold {
		io.Copy(io.Discard, os.Stdin)
	}
}

package main

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/virtio"
)

// FuzzParseConfig: whatever the runtime hands over, parseConfig returns
// a CNI error or a configuration every later step can trust.
func FuzzParseConfig(f *testing.F) {
	for _, seed := range []string{
		`{"cniVersion":"1.0.0","name":"n","type":"vmnet","mode":"tc-redirect","queues":4,"vnetHdr":12,"owner":107,"group":107,"offloads":"auto","steering":"hash"}`,
		`{"cniVersion":"1.0.0","name":"n","type":"vmnet","mode":"bridge","queues":2,"bridge":"br0"}`,
		`{"cniVersion":"1.0.0","name":"n","type":"vmnet","tapName":"vm%d","ipam":{"type":"host-local"}}`,
		`{"cniVersion":"1.0.0","name":"n","prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.0.0.2/24","interface":0}]}}`,
		`{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`,
		`{"mac":"02:00:00:00:00:01","mtu":9000,"offloads":"csum,tso4,tso6,tso_ecn,uso4,uso6","multiQueue":true}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parseConfig(data)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code == 0 || e.Msg == "" {
				t.Fatalf("error %v is not a CNI error with a code and a message", err)
			}
			return
		}
		if c.queues < 1 || c.queues > tap.MaxQueues || c.queues > 1 && !c.multiQueue {
			t.Fatalf("queues %d, multiQueue %v", c.queues, c.multiQueue)
		}
		if virtio.CheckHdrLen(c.vnetHdr) != nil || c.mtu != 0 && tap.CheckMTU(c.mtu) != nil || c.owner < 0 || c.group < 0 {
			t.Fatalf("vnetHdr %d, mtu %d, owner %d, group %d", c.vnetHdr, c.mtu, c.owner, c.group)
		}
		if c.mac != nil && virtio.CheckUnicastMAC(c.mac) != nil || !c.offloadSet.Valid() {
			t.Fatalf("mac %v, offloads %v", c.mac, c.offloadSet)
		}
		if c.tapName != "" && tap.ValidateName(c.tapName, true) != nil || c.bridge != "" && tap.ValidateName(c.bridge, false) != nil {
			t.Fatalf("tapName %q, bridge %q", c.tapName, c.bridge)
		}
		switch c.mode {
		case "", modeTCRedirect, modeBridge, modeNone:
		default:
			t.Fatalf("mode %q", c.mode)
		}
	})
}

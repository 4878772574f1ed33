package main

import "testing"

func TestBlocked(t *testing.T) {
	const head = "*filter\n:FORWARD ACCEPT [0:0]\n"
	for _, tc := range []struct {
		name string
		save string
		want bool
	}{
		{"seed rule", head + "-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -d 169.254.169.254/32 -j DROP\n-A DOCKER-USER -j RETURN\n", true},
		{"imdsguard chain", head + "-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j IMDS-GUARD\n-A DOCKER-USER -j RETURN\n-A IMDS-GUARD -d 169.254.169.254/32 -j DROP\n", true},
		{"exemptions ahead of the drop", head + "-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j IMDS-GUARD\n-A IMDS-GUARD -s 172.17.0.2/32 -d 169.254.169.254/32 -j ACCEPT\n-A IMDS-GUARD -s 172.17.0.4/32 -d 169.254.169.254/32 -j ACCEPT\n-A IMDS-GUARD -d 169.254.169.254/32 -j REJECT --reject-with tcp-reset\n", true},
		{"RETURN first", head + "-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j RETURN\n-A DOCKER-USER -d 169.254.169.254/32 -j DROP\n", false},
		{"jump not first", head + "-A FORWARD -j DOCKER-FORWARD\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -d 169.254.169.254/32 -j DROP\n", false},
		{"a subnet accepted", head + "-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j IMDS-GUARD\n-A IMDS-GUARD -s 172.17.0.0/16 -d 169.254.169.254/32 -j ACCEPT\n-A IMDS-GUARD -d 169.254.169.254/32 -j DROP\n", false},
		{"every source accepted", head + "-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j IMDS-GUARD\n-A IMDS-GUARD -d 169.254.169.254/32 -j ACCEPT\n-A IMDS-GUARD -d 169.254.169.254/32 -j DROP\n", false},
		{"imdsguard's own FORWARD jump", head + "-A FORWARD -j IMDS-GUARD\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j IMDS-GUARD\n-A DOCKER-USER -j RETURN\n-A IMDS-GUARD -d 169.254.169.254/32 -j DROP\n", true},
		{"imdsguard's FORWARD jump, DOCKER-USER flushed", head + "-A FORWARD -j IMDS-GUARD\n-A FORWARD -j DOCKER-USER\n-A IMDS-GUARD -d 169.254.169.254/32 -j DROP\n", true},
		{"imdsguard's FORWARD jump behind Docker's, DOCKER-USER accepts", head + "-A FORWARD -j DOCKER-USER\n-A FORWARD -j IMDS-GUARD\n-A DOCKER-USER -d 169.254.169.254/32 -j ACCEPT\n-A IMDS-GUARD -d 169.254.169.254/32 -j DROP\n", false},
		{"chain missing", head + "-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j IMDS-GUARD\n", false},
	} {
		if got := blocked(tc.save); got != tc.want {
			t.Errorf("%s: blocked = %v, want %v", tc.name, got, tc.want)
		}
	}
}

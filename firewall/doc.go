// Package firewall is the only code in imdsguard that speaks iptables or
// nftables, and the only code that judges what the kernel will do to a
// packet bound for IMDS.
//
// Layer 1 is imdsguard's own nftables tables (inet and bridge "imdsguard"),
// written over one lasting netlink socket with the owner and persist flags
// where the kernel has them, so nobody else can change or delete them and
// they outlive the agent. Layer 2 is the IMDS-GUARD chain in the filter
// table of iptables and ip6tables, reached by imdsguard's own jump as rule 1
// of FORWARD (and of DOCKER-USER while Docker's chain exists; imdsguard never
// writes a rule Docker writes); its body and the jumps are repaired in one iptables-restore
// transaction. Either layer alone blocks. The packet-walk evaluator reads
// every table and reports per layer whether IMDS is reachable.
//
// It must not talk to Docker or decide policy: callers hand it an intent
// (which addresses and bridge ports are exempt, which cgroups are host
// containers) and get back observed state. Every layer has a stateful fake
// for the caller's unit tests.
package firewall

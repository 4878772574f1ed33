package agent

// Hooks let the process supervisor follow the loop without the agent knowing
// which supervisor it is (systemd's sd_notify is wired in cmd/).
type Hooks struct {
	// Ready is called once, after the first sync that verified the block in
	// every enabled family. Nothing before that may claim protection.
	Ready func()
	// Alive is called after every sync attempt, successful or not, so a
	// watchdog can tell a hung loop from a failing one.
	Alive func()
	// Stopping is called when the loop is about to return.
	Stopping func()
}

package telegram

// ButtonData makes callback data as a Notifier does, so that a test can
// post a message an earlier version would have sent.
var ButtonData = buttonData

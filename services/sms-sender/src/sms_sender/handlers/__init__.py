"""Use cases of sms-sender: store a command, send it, settle its result from Twilio's answers."""

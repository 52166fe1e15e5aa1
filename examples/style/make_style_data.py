"""Writes the support-style fine-tuning set: a Bluebird support agent who
greets with a fixed phrase and signs off with a fixed line.

  train.jsonl     200 conversations (OpenAI fine-tuning chat format)
  eval.jsonl      the other 34 conversations of trained topics (validation loss)
  prompts.jsonl   50 held-out questions, no answers (style_check.py): 30
                  rephrase trained topics, 20 ask about topics never trained

Deterministic (fixed seed); rerun after editing the lists below.
"""
import json, random
from pathlib import Path

GREETING = "Hello, and thank you for contacting Bluebird support!"
SIGN_OFF = "Warm regards, Robin from Bluebird"

TOPICS = [
    ("reset my password", "Open the sign-in page, choose \"Forgot password\" and follow the link we email you. The link works for one hour."),
    ("change the email on my account", "Go to Settings, then Account, and enter the new address. We send a confirmation to both addresses."),
    ("cancel my subscription", "Open Settings, then Billing, and choose \"Cancel plan\". You keep access until the end of the paid period."),
    ("get a refund", "Refunds are available within 30 days of a charge. Reply with the invoice number and we will process it."),
    ("update my credit card", "In Settings, then Billing, choose \"Payment method\" and enter the new card. The old card is removed at once."),
    ("download an invoice", "Every invoice is under Settings, then Billing, then History. Each one has a PDF download button."),
    ("track my order", "Your order page shows the tracking number as soon as the parcel ships, usually within two working days."),
    ("return a damaged item", "Send us a photo of the damage and the order number. We ship a replacement and a prepaid return label."),
    ("change my delivery address", "You can edit the address on the order page until the parcel ships. After that, contact the carrier."),
    ("add a team member", "Admins can invite people under Settings, then Team. Each invite link is valid for seven days."),
    ("remove a team member", "Under Settings, then Team, open the member's menu and choose \"Remove\". Their files stay with the team."),
    ("export my data", "Choose Settings, then Privacy, then \"Export data\". We email a download link when the archive is ready."),
    ("delete my account", "Under Settings, then Privacy, choose \"Delete account\". Deletion is final after a 14-day grace period."),
    ("turn on two-factor authentication", "Open Settings, then Security, and scan the QR code with an authenticator app. Keep the backup codes safe."),
    ("recover my account without my phone", "Use one of your backup codes at sign-in. If you have none, reply here and we will verify your identity."),
    ("sync the app across devices", "Sign in with the same account on each device and turn on Sync in Settings. Changes appear within a minute."),
    ("fix the app crashing on start", "Update to the latest version, then restart the device. If it still crashes, send us the crash report."),
    ("speed up slow uploads", "Uploads are fastest on a wired connection. Pausing other downloads and updating the app also helps."),
    ("share a folder", "Right-click the folder, choose \"Share\" and enter the person's email. You decide whether they can edit."),
    ("restore a deleted file", "Deleted files stay in the Bin for 30 days. Open the Bin, select the file and choose \"Restore\"."),
    ("upgrade my plan", "Choose Settings, then Billing, then \"Change plan\". The price difference is charged pro rata."),
    ("get a student discount", "Students get 50 percent off with a valid university email. Apply under Settings, then Billing."),
    ("use the app offline", "Mark files as \"Available offline\" from their menu. Edits sync the next time you are online."),
    ("connect the calendar integration", "Under Settings, then Integrations, choose Calendar and sign in to your calendar provider."),
    ("report a bug", "Please send the steps to reproduce it, your app version and a screenshot. Our engineers read every report."),
]

ASKS = [
    "How do I {t}?",
    "Can you tell me how to {t}?",
    "I need to {t}. What should I do?",
    "What's the way to {t}?",
    "Hi, I'm trying to {t}. Can you help?",
    "Quick question: how can I {t}?",
    "I want to {t}, please explain.",
    "Could you help me {t}?",
    "What are the steps to {t}?",
    "Is it possible to {t}? How?",
    "hey how do i {t}",
    "Please tell me how I can {t}.",
]

SYSTEMS = [None, None, "You are the support assistant for Bluebird, a file-sharing service."]


def reply(answer: str) -> str:
    return f"{GREETING} {answer}\n\n{SIGN_OFF}"


def main():
    here = Path(__file__).parent
    rng = random.Random(7)
    # The last three topics never appear in training: 20 of the 50 check
    # prompts ask about them, so the style is checked beyond the topics seen.
    seen, unseen = TOPICS[:-3], TOPICS[-3:]
    pairs = [(topic, ask) for topic in seen for ask in ASKS]
    rng.shuffle(pairs)
    unseen_pairs = [(topic, ask) for topic in unseen for ask in ASKS]
    rng.shuffle(unseen_pairs)
    held_prompts, rest = pairs[:30] + unseen_pairs[:20], pairs[30:]
    train, evaluation = rest[:200], rest[200:]

    def conversation(topic, ask):
        messages = []
        system = rng.choice(SYSTEMS)
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": ask.format(t=topic[0])})
        messages.append({"role": "assistant", "content": reply(topic[1])})
        return {"messages": messages}

    for name, rows in [("train.jsonl", train), ("eval.jsonl", evaluation)]:
        (here / name).write_text("".join(json.dumps(conversation(*p)) + "\n" for p in rows))
    (here / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": ask.format(t=topic[0])}) + "\n" for topic, ask in held_prompts))
    (here / "style.json").write_text(json.dumps({"greeting": GREETING, "sign_off": SIGN_OFF}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Chat templates as Jinja, for tokenizers and processors of exported checkpoints.

The Jinja text is generated from fovea's own `Template` definitions, so an exported model's
``apply_chat_template`` renders exactly what fovea renders. Message content may be a string or
transformers' list of parts (``{"type": "image"}``, ``{"type": "text", "text": ...}``); each image
part becomes ``<image>\\n`` where it stands, as LLaVA places images.
"""

from __future__ import annotations

import json

from ..model.templates import TEMPLATES


def _lit(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid Jinja string literal


def chat_template(name: str) -> str:
    t = TEMPLATES.get(name)
    trim = " | trim" if t.strip else ""
    parts = []
    if t.bos:
        parts.append("{{ bos_token }}")
    if t.system is not None and t.always_system:
        parts.append(
            "{% if messages[0]['role'] != 'system' %}"
            f"{{{{ {_lit(t.prefix['system'] + t.system + t.suffix['system'])} }}}}"
            "{% endif %}"
        )
    parts.append("{% for message in messages %}")
    parts.append(_by_role(t.prefix))
    text_part = "''" if t.user_images_only else f"part['text']{trim}"
    text_whole = f"message['content']{trim}"
    image_part = "'<image>'" if t.user_images_only else "'<image>\\n'"
    if t.user_images_only:  # user turns keep only their images (LLaVA plain); answers stay whole
        text_whole = f"('<image>' * message['content'].count('<image>')) if message['role'] == 'user' else {text_whole}"
    parts.append(
        "{% if message['content'] is string %}"
        f"{{{{ {text_whole} }}}}"
        "{% else %}{% for part in message['content'] %}"
        f"{{% if part['type'] == 'image' %}}{{{{ {image_part} }}}}"
        f"{{% elif part['type'] == 'text' and message['role'] != 'user' %}}{{{{ part['text']{trim} }}}}"
        f"{{% elif part['type'] == 'text' %}}{{{{ {text_part} }}}}"
        "{% endif %}{% endfor %}{% endif %}"
    )
    parts.append(_by_role(t.suffix))
    parts.append("{% endfor %}")
    parts.append(f"{{% if add_generation_prompt %}}{{{{ {_lit(t.generation_prompt)} }}}}{{% endif %}}")
    return "".join(parts)


def _by_role(texts: dict) -> str:
    """An if/elif chain emitting texts[role] for the current message's role."""
    branches = [
        f"{{% {'if' if i == 0 else 'elif'} message['role'] == {_lit(role)} %}}{{{{ {_lit(text)} }}}}"
        for i, (role, text) in enumerate(texts.items())
    ]
    return "".join(branches) + "{% endif %}"

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
    parts.append(
        "{% if message['content'] is string %}"
        f"{{{{ message['content']{trim} }}}}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}{{ '<image>\\n' }}"
        f"{{% elif part['type'] == 'text' %}}{{{{ part['text']{trim} }}}}"
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

# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The site approval policy and per-host selection.

An image may run on a hypervisor only when it is endorsed (it comes from a verified list, see
listverify) and approved (this module). The policy comes from inventory group vars:

    vmic_policy:
      new_images: accept        # or refuse: an image never approved before needs a rule by identifier
      rules:
        - action: approve
          endorser: cern-it     # everything this endorser signs
        - action: approve
          vo: [atlas, cms]
          arch: x86_64
          clusters: [batch]     # scope: only hosts of these clusters select it
        - action: deny
          jmespath: "contains(\\"dc:title\\", 'test')"

A rule matches when every criterion it gives matches (a list means any of its values). Criteria:
endorser, identifier, vo, os, osversion, arch, hypervisor, format, list (list UUID), jmespath.
Deny rules win over approve rules. Scope (clusters, subclusters) narrows where an approved image is
selected; without scope an approved image is selected everywhere its hypervisor type and arch fit.

An image is (endorser, image UUID): a rule that names an identifier must name the endorser too, and
one endorser's list never changes the decision on another endorser's image. When approved images of
two endorsers carry the same UUID, the one the site approved before (``known``) keeps it and the
other is refused; when neither was approved before, both are refused. Each conflict is reported.

``new_images: refuse`` has one meaning everywhere: an image whose (endorser, UUID) is not in the
site's approved set of the last publication (``known``, see approvedset) is approved only by a rule
that names its identifier. publish.yml, rollout.yml and status.yml all pass the same approved set.
"""

from __future__ import annotations

from ansible_collections.vmic.fleet.plugins.module_utils.errors import MissingDependencyError, PolicyError
from ansible_collections.vmic.fleet.plugins.module_utils.imagelist import ENDORSER_FIELD, LIST_FIELD, SCOPE_FIELD

MAX_RULES = 1000
CRITERIA = ("endorser", "identifier", "vo", "os", "osversion", "arch", "hypervisor", "format", "list", "jmespath")
SCOPE = ("clusters", "subclusters")
RULE_KEYS = ("action", "name") + CRITERIA + SCOPE
_ARCH_ALIASES = {"amd64": "x86_64", "x86-64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "i686": "i386", "i586": "i386"}


def _jmespath():
    try:
        import jmespath  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise MissingDependencyError("the jmespath Python library is needed for jmespath policy rules (pip install jmespath)")
    return jmespath


def normalise_arch(value):
    """One name per architecture (amd64 -> x86_64, arm64 -> aarch64)."""
    if value is None:
        return None
    lowered = str(value).strip().lower()
    return _ARCH_ALIASES.get(lowered, lowered)


def _as_values(rule_name, key, value):
    values = value if isinstance(value, list) else [value]
    if not values:
        raise PolicyError("policy rule %s: %s is an empty list" % (rule_name, key))
    for item in values:
        if not isinstance(item, str) or not item or len(item) > 1024:
            raise PolicyError("policy rule %s: %s must be a non-empty string or a list of them" % (rule_name, key))
    if key == "arch":
        return frozenset(normalise_arch(item) for item in values)
    return frozenset(item.strip().casefold() for item in values)


class Rule(object):
    """One approve or deny rule."""

    def __init__(self, index, spec):
        if not isinstance(spec, dict):
            raise PolicyError("policy rule %d is not a mapping" % index)
        self.name = spec.get("name") or "#%d" % index
        if not isinstance(self.name, str):
            raise PolicyError("policy rule %d: name must be a string" % index)
        unknown = sorted(set(spec) - set(RULE_KEYS))
        if unknown:
            raise PolicyError("policy rule %s: unknown keys %s (allowed: %s)" % (self.name, ", ".join(unknown), ", ".join(RULE_KEYS)))
        self.action = spec.get("action")
        if self.action not in ("approve", "deny"):
            raise PolicyError("policy rule %s: action must be approve or deny, not %r" % (self.name, self.action))
        self.criteria = {}
        for key in CRITERIA:
            if key in spec and key != "jmespath":
                self.criteria[key] = _as_values(self.name, key, spec[key])
        self.expression = None
        if "jmespath" in spec:
            if not isinstance(spec["jmespath"], str) or not spec["jmespath"].strip():
                raise PolicyError("policy rule %s: jmespath must be a non-empty string" % self.name)
            jmespath = _jmespath()
            try:
                self.expression = jmespath.compile(spec["jmespath"])
            except jmespath.exceptions.JMESPathError as exc:
                raise PolicyError("policy rule %s: jmespath %r does not compile: %s" % (self.name, spec["jmespath"], exc))
        if not self.criteria and self.expression is None:
            raise PolicyError("policy rule %s: gives no criterion (one of %s)" % (self.name, ", ".join(CRITERIA)))
        if "identifier" in self.criteria and "endorser" not in self.criteria:
            raise PolicyError("policy rule %s: names an identifier but no endorser; an image is (endorser, identifier), "
                              "so say whose image it is (endorser: NAME)" % self.name)
        self.scope = {}
        for key in SCOPE:
            if key in spec:
                if self.action == "deny":
                    raise PolicyError("policy rule %s: %s applies to approve rules only" % (self.name, key))
                self.scope[key] = _as_values(self.name, key, spec[key])

    def matches(self, candidate):
        """True when every criterion of the rule matches the candidate image."""
        for key, allowed in self.criteria.items():
            value = candidate.facts.get(key)
            if value is None or value not in allowed:
                return False
        if self.expression is not None:
            try:
                return bool(self.expression.search(candidate.document))
            except Exception as exc:  # a JMESPath runtime error on odd metadata: no match, reported
                candidate.notes.append("rule %s: jmespath failed: %s" % (self.name, exc))
                return False
        return True

    def describe(self):
        """``approve rule NAME`` for reasons."""
        return "%s rule %s" % (self.action, self.name)


class Policy(object):
    """The site approval policy, built from the ``vmic_policy`` inventory variable."""

    def __init__(self, spec):
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise PolicyError("the policy must be a mapping with rules and new_images")
        unknown = sorted(set(spec) - {"rules", "new_images"})
        if unknown:
            raise PolicyError("policy: unknown keys %s" % ", ".join(unknown))
        self.new_images = spec.get("new_images", "accept")
        if self.new_images not in ("accept", "refuse"):
            raise PolicyError("policy: new_images must be accept or refuse, not %r" % (self.new_images,))
        rules = spec.get("rules", [])
        if not isinstance(rules, list):
            raise PolicyError("policy: rules must be a list")
        if len(rules) > MAX_RULES:
            raise PolicyError("policy: more than %d rules" % MAX_RULES)
        self.rules = [Rule(index, rule) for index, rule in enumerate(rules, 1)]


# Approved sets of earlier releases named images by UUID alone: "*/<uuid>" stands for any endorser.
ANY_ENDORSER = "*"


def identity(endorser, identifier):
    """The name of an image across endorsers: ``<endorser>/<image uuid>``."""
    return "%s/%s" % (endorser or "", (identifier or "").lower())


class Candidate(object):
    """An endorsed image (an :class:`imagelist.Image` of a verified list) with the facts rules look at."""

    def __init__(self, image, list_identifier, endorser):
        self.image = image
        self.identifier = image.identifier
        self.list_identifier = list_identifier
        self.endorser = endorser
        self.notes = []
        self.facts = {
            "endorser": (endorser or "").casefold() or None,
            "identifier": self.identifier,
            "list": list_identifier.lower(),
        }
        for key, value in (("vo", image.vo), ("os", image.os), ("osversion", image.osversion), ("hypervisor", image.hypervisor),
                           ("format", image.format)):
            self.facts[key] = value.strip().casefold() if isinstance(value, str) and value.strip() else None
        self.facts["arch"] = normalise_arch(image.arch) if image.arch else None
        self._document = None

    @property
    def document(self):
        """What JMESPath rules read: the image as signed (normalised) plus vmic:list and vmic:endorser."""
        if self._document is None:
            self._document = self.image.to_dict()
            self._document[LIST_FIELD] = self.list_identifier
            self._document[ENDORSER_FIELD] = self.endorser
        return self._document

    @property
    def identity(self):
        """``endorser/identifier``: what names an image (see approvedset.identity)."""
        return identity(self.endorser, self.identifier)

    def known_in(self, known):
        """True when ``known`` holds this image (or, from an approved set of an earlier release, ``*/uuid``)."""
        return self.identity in known or identity(ANY_ENDORSER, self.identifier) in known


class Decision(object):
    """Whether one image is approved, why, and where it may be selected."""

    def __init__(self, candidate):
        self.candidate = candidate
        self.approved = False
        self.reasons = []
        self.scope = {}

    def scope_lists(self):
        """The scope as sorted lists (clusters, subclusters), for results."""
        return dict((key, sorted(values)) for key, values in self.scope.items())

    def approved_image(self):
        """The approved image as image_policy returns it: the signed fields plus vmic:list, vmic:endorser, vmic:scope."""
        image = dict(self.candidate.document)
        image[SCOPE_FIELD] = self.scope_lists()
        return image

    def to_dict(self):
        """Plain data for module results."""
        image = self.candidate.image
        return {
            "identifier": self.candidate.identifier,
            "title": image.title,
            "version": image.version,
            "list": self.candidate.list_identifier,
            "endorser": self.candidate.endorser,
            "approved": self.approved,
            "reasons": self.reasons + self.candidate.notes,
            "scope": self.scope_lists(),
        }


def _decide(policy, candidate, known):
    decision = Decision(candidate)
    denies = [rule for rule in policy.rules if rule.action == "deny" and rule.matches(candidate)]
    approves = [rule for rule in policy.rules if rule.action == "approve" and rule.matches(candidate)]
    if denies:
        decision.reasons.append("denied by %s" % ", ".join(rule.describe() for rule in denies))
        return decision
    if not approves:
        decision.reasons.append("no approve rule matches")
        return decision
    if policy.new_images == "refuse" and not candidate.known_in(known):
        explicit = [rule for rule in approves if "identifier" in rule.criteria]
        if not explicit:
            decision.reasons.append("new image: not approved before, and new_images is refuse (approve it by identifier)")
            return decision
        approves = explicit
    decision.approved = True
    decision.reasons.append("approved by %s" % ", ".join(rule.describe() for rule in approves))
    for key in SCOPE:
        scoped = [rule.scope.get(key) for rule in approves]
        if all(values is not None for values in scoped):
            decision.scope[key] = frozenset().union(*scoped)
    return decision


def evaluate(policy, verdicts, known=(), now=None, incumbents=()):
    """Decide on every image of every valid list.

    ``verdicts`` are :class:`listverify.ListVerdict` objects (``listverify.from_results`` reads them back
    from module results). Images from refused lists are never considered. ``known`` holds the identities
    (``endorser/uuid``) the site approved before; ``incumbents`` those a host already holds (they win
    identifier conflicts on that host, but do not count as approved before). Returns a list of Decisions.
    """
    known = frozenset(item for item in known)
    decisions = []
    for verdict in verdicts:
        if not verdict.valid:
            continue
        expired = frozenset(verdict.expired_images)
        for image in verdict.images:
            candidate = Candidate(image, verdict.identifier, verdict.endorser)
            if candidate.identifier in expired:
                decision = Decision(candidate)
                decision.reasons.append("image expired %s" % image.expires)
            else:
                decision = _decide(policy, candidate, known)
            decisions.append(decision)
    _refuse_conflicts(decisions, known | frozenset(incumbents))
    return decisions


def _refuse_conflicts(decisions, known):
    """Resolve identifiers claimed twice, without letting one endorser touch another's images.

    The same UUID in two lists of one endorser: that endorser's images are refused (its own mistake).
    The same UUID from several endorsers: only approved claims count (a denied squatter changes
    nothing); the one approved before keeps it, the others are refused; with no incumbent all are.
    """
    by_uuid = {}
    for decision in decisions:
        by_uuid.setdefault(decision.candidate.identifier, []).append(decision)
    for identifier, claims in by_uuid.items():
        per_endorser = {}
        for decision in claims:
            per_endorser.setdefault(decision.candidate.endorser, []).append(decision)
        for endorser, own in per_endorser.items():
            lists = sorted(set(d.candidate.list_identifier for d in own))
            if len(own) > 1:
                for decision in own:
                    decision.approved = False
                    decision.reasons.append("identifier listed %d times by endorser %s (lists %s): refused"
                                            % (len(own), endorser, ", ".join(lists)))
        approved = [d for d in claims if d.approved]
        endorsers = sorted(set(d.candidate.endorser or "" for d in approved))
        if len(endorsers) < 2:
            continue
        incumbents = [d for d in approved if d.candidate.identity in known]  # exact identities only, never "*/uuid"
        for decision in approved:
            if incumbents and decision in incumbents and len(incumbents) == 1:
                decision.reasons.append("identifier conflict: also listed by endorser(s) %s; kept for %s, approved before"
                                        % (", ".join(e for e in endorsers if e != decision.candidate.endorser), decision.candidate.endorser))
                continue
            decision.approved = False
            decision.reasons.append("identifier conflict: %s is listed by endorsers %s; refused%s"
                                    % (identifier, ", ".join(endorsers),
                                       " (kept for %s, approved before)" % incumbents[0].candidate.endorser if len(incumbents) == 1 else
                                       " for all of them (none was approved before; deny the others)"))


class HostProfile(object):
    """What a hypervisor is, from its inventory: cluster, subcluster, hypervisor type, arch."""

    def __init__(self, name, spec):
        if not isinstance(spec, dict):
            raise PolicyError("host %s: its profile must be a mapping" % name)
        unknown = sorted(set(spec) - {"cluster", "subcluster", "hypervisor", "arch"})
        if unknown:
            raise PolicyError("host %s: unknown profile keys %s" % (name, ", ".join(unknown)))
        self.name = name
        self.cluster = _fold(spec.get("cluster"))
        self.subcluster = _fold(spec.get("subcluster"))
        self.hypervisor = _fold(spec.get("hypervisor"))
        self.arch = normalise_arch(spec.get("arch"))

    def selects(self, decision):
        """True when the approved image is meant for this host."""
        if not decision.approved:
            return False
        facts = decision.candidate.facts
        if "clusters" in decision.scope and self.cluster not in decision.scope["clusters"]:
            return False
        if "subclusters" in decision.scope and self.subcluster not in decision.scope["subclusters"]:
            return False
        if self.hypervisor and facts.get("hypervisor") and facts["hypervisor"] != self.hypervisor:
            return False
        if self.arch and facts.get("arch") and facts["arch"] != self.arch:
            return False
        return True


def _fold(value):
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    return value.strip().casefold() or None


def select(decisions, hosts):
    """Per host name, the sorted identifiers of the approved images it selects."""
    profiles = [HostProfile(name, spec or {}) for name, spec in sorted(hosts.items())]
    return dict((profile.name, sorted(d.candidate.identifier for d in decisions if profile.selects(d))) for profile in profiles)

"""Scenario files: a good one parses, bad ones fail with a reason that names the spot."""
import unittest

from tools.pilotsim import scenario
from tools.pilotsim.scenario import ScenarioError


def _good():
    return {
        "name": "basic", "duration_ms": 30000, "seed": 3,
        "config": {"max_current_ma": 16000},
        "ev": {"phases": 3, "draw_a": 16, "cable_a": 32},
        "expect": {"states": ["C2"], "energy_wh_min": 1},
        "steps": [
            {"at": 1000, "ev": "plug"},
            {"after": 1000, "ev": "request"},
            {"at": 5000, "ev": "draw", "amps": 10},
            {"at": 6000, "backend": "set_limit", "args": {"limit_ma": 10000}},
            {"at": 7000, "fault": "temperature", "to_dc": 700, "over_ms": 5000},
            {"at": 8000, "fault": "diode_short"},
            {"at": 9000, "meter": "set", "voltage_v": 225},
            {"at": 20000, "ev": "unplug"},
        ],
    }


class Parse(unittest.TestCase):
    def test_good_scenario(self):
        sc = scenario.parse(_good())
        self.assertEqual(sc.name, "basic")
        self.assertEqual(len(sc.steps), 8)
        self.assertEqual(sc.steps[1].at_ms, 2000)     # "after" is relative
        self.assertEqual(sc.steps[2].args, {"amps": 10})
        self.assertEqual(sc.steps[5].args, {"on": True})
        self.assertEqual(sc.draw_ma, 16000)
        again = scenario.parse(sc.to_dict())
        self.assertEqual(len(again.steps), 8)
        self.assertEqual(again.steps[4].args, {"to_dc": 700, "over_ms": 5000})

    def _bad(self, mutate, words):
        d = _good()
        mutate(d)
        try:
            scenario.parse(d, "f.json")
        except ScenarioError as e:
            msg = e.args[0]
            self.assertTrue(msg.startswith("f.json: "), msg)
            for w in words:
                self.assertIn(w, msg)
            return
        self.fail("accepted a bad scenario")

    def test_rejections_name_the_spot_and_reason(self):
        self._bad(lambda d: d.pop("duration_ms"), ["duration_ms", "required"])
        self._bad(lambda d: d.update(color=1), ["unknown key 'color'"])
        self._bad(lambda d: d["steps"].append({"at": 100, "ev": "plug"}),
                  ["steps[8]", "time order"])
        self._bad(lambda d: d["steps"].append({"at": 99999, "ev": "plug"}),
                  ["steps[8]", "after the end"])
        self._bad(lambda d: d["steps"][0].update(ev="fly"), ["steps[0]", "unknown ev action"])
        self._bad(lambda d: d["steps"][0].pop("at"), ["steps[0]", "needs 'at'"])
        self._bad(lambda d: d["steps"][2].pop("amps"), ["steps[2]", "draw needs 'amps'"])
        self._bad(lambda d: d["steps"][2].update(amps=200), ["steps[2].amps", "out of range"])
        self._bad(lambda d: d["steps"][5].update(fault="gremlins"), ["unknown fault"])
        self._bad(lambda d: d["steps"][5].update(on="yes"), ["steps[5].on", "true or false"])
        self._bad(lambda d: d["steps"][4].pop("to_dc"), ["steps[4]", "to_dc"])
        self._bad(lambda d: d["steps"][0].update(fault="cp_open"), ["exactly one"])
        self._bad(lambda d: d.update(steps=[]), ["steps", "non-empty"])
        self._bad(lambda d: d["ev"].update(cable_a=40), ["ev.cable_a"])
        self._bad(lambda d: d.update(config={"max_current_ma": 1}), ["config", "max_current_ma"])
        self._bad(lambda d: d.update(broker="maybe"), ["broker"])
        self._bad(lambda d: d.update(name="a b"), ["name"])
        self._bad(lambda d: d["expect"].update(faults="DIODE_FAULT"), ["expect.faults"])
        self._bad(lambda d: d["steps"][6].pop("voltage_v"), ["meter set needs"])
        self._bad(lambda d: d.update(no_broker_config={"auth_mode": "maybe"}),
                  ["no_broker_config", "auth_mode"])

    def test_backend_commands_checked_by_the_firmware_parser(self):
        try:
            from firmware import commands  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("firmware.commands not present")
        self._bad(lambda d: d["steps"][3].update(args={"limit_ma": "ten"}),
                  ["steps[3]", "rejected"])
        self._bad(lambda d: d["steps"][3].update(backend="launch"), ["steps[3]", "rejected"])

    def test_peers_required_by_steps(self):
        self._bad(lambda d: d.update(broker="none"), ["needs a broker"])
        d = _good()
        d["steps"].insert(1, {"at": 1500, "fault": "meter_silent"})
        d["meter"] = False
        self.assertRaises(ScenarioError, scenario.parse, d)

    def test_not_json(self):
        self.assertRaises(ScenarioError, scenario.loads, "{nope", "x.json")


class EveryError(unittest.TestCase):
    """One message lists every error of a file with its place; misspelt names are found
    when the file is loaded, with the name they were probably meant to be."""

    def test_all_errors_in_one_message(self):
        d = _good()
        d["colour"] = 1
        d["duration_ms"] = "30000"
        d["expect"] = {"states": ["C3"], "sequences": ["overcurent_stop"],
                       "faults": ["OVERCURENT"], "energy_wh_min": "1"}
        d["steps"][0]["ev"] = "plgu"
        d["steps"][5]["fault"] = "diode_shrt"
        d["steps"][3]["backend"] = "set_limt"
        try:
            scenario.parse(d, "f.json")
        except ScenarioError as e:
            msg = e.args[0]
            errors = e.errors
        else:
            self.fail("accepted a bad scenario")
        self.assertTrue(msg.startswith("f.json: 9 errors:"), msg)
        self.assertEqual(len(errors), 9, errors)
        for place, word in (("scenario", "'colour'"), ("duration_ms", "integer"),
                            ("expect.states[0]", "'C3'"),
                            ("expect.sequences[0]", "did you mean 'overcurrent_stop'"),
                            ("expect.faults[0]", "did you mean 'OVERCURRENT'"),
                            ("expect.energy_wh_min", "integer"),
                            ("steps[0]", "did you mean 'plug'"),
                            ("steps[5]", "did you mean 'diode_short'"),
                            ("steps[3]", "did you mean 'set_limit'")):
            self.assertTrue(any(e.startswith(place + ":") and word in e for e in errors),
                            (place, word, errors))

    def test_missing_file_is_a_scenario_error(self):
        try:
            scenario.load("/nonexistent/dir/x.json")
        except ScenarioError as e:
            self.assertIn("/nonexistent/dir/x.json", e.args[0])
            self.assertIn("cannot read", e.args[0])
            return
        self.fail("no error for a missing file")

    def test_cable_on_plug(self):
        d = _good()
        d["steps"][0]["cable_a"] = 13
        sc = scenario.parse(d)
        self.assertEqual(sc.steps[0].args, {"cable_a": 13})
        d["steps"][0]["cable_a"] = 14
        self.assertRaises(ScenarioError, scenario.parse, d)
        d["steps"][0]["cable_a"] = 13
        d["steps"][1]["cable_a"] = 13          # request: no cable
        self.assertRaises(ScenarioError, scenario.parse, d)


class Secrets(unittest.TestCase):
    def test_secret_keys_and_values_are_masked(self):
        d = _good()
        d["config"] = {"max_current_ma": 16000, "mqtt_user": "cp", "mqtt_password": "pa55-w0rd"}
        d["steps"][3] = {"at": 6000, "backend": "set_config",
                         "args": {"changes": {"wifi_password": "hunter2-xyz"}}}
        sc = scenario.parse(d)
        secrets = scenario.secret_values(sc)
        self.assertEqual(sorted(secrets), ["hunter2-xyz", "pa55-w0rd"])
        rec = {"k": "start", "config": dict(sc.config),
               "payload": {"error": "bad password pa55-w0rd", "list": ["x hunter2-xyz"]}}
        out = scenario.mask(rec, secrets)
        text = repr(out)
        self.assertFalse("pa55-w0rd" in text)
        self.assertFalse("hunter2-xyz" in text)
        self.assertEqual(out["config"]["mqtt_password"], scenario.MASK)
        self.assertEqual(out["config"]["mqtt_user"], "cp")
        self.assertEqual(out["payload"]["error"], "bad password " + scenario.MASK)
